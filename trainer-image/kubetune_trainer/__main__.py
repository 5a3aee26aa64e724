from kubetune_trainer.main import main

main()
