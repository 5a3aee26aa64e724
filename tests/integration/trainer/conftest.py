from ...unit.trainer.conftest import volumes

__all__ = ["volumes"]
