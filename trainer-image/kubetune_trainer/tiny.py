"""Tiny models of real architectures, made locally with random weights and a tokenizer
trained on the spot: for tests, for the quickstart and for anyone without a Hub.

They load through the same `from_pretrained` path as a real model on a volume. Large
initial weights (initializer_range 0.2) let a LoRA memorise a small dataset quickly.
Decoders (phi3, llama) serve causal-lm and the classification tasks; the encoder-decoder
(t5) serves seq2seq.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from kubetune_trainer.mounts import open_to_readers

Architecture = Literal["phi3", "llama", "t5"]

T5_SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]

SPECIAL_TOKENS = ["<unk>", "<s>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]

# The shape of Phi-3's own template: every turn closes with <|end|>, and a conversation
# that is not waiting for an answer closes with the end-of-text token.
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


def make_tiny_model(
    folder: Path,
    corpus: Iterable[str],
    architecture: Architecture = "phi3",
    hidden_size: int = 64,
    layers: int = 2,
    vocab_size: int = 512,
    max_positions: int = 1024,
    seed: int = 0,
) -> Path:
    """Write a tokenizer trained on `corpus` and a randomly initialised model to `folder`."""
    if architecture == "t5":
        return _make_tiny_t5(folder, corpus, hidden_size, layers, vocab_size, seed)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM, PreTrainedModel

    tokenizer = _bpe_tokenizer(
        corpus,
        vocab_size,
        SPECIAL_TOKENS,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    tokenizer.chat_template = PHI3_CHAT_TEMPLATE

    shape = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": max_positions,
        "initializer_range": 0.2,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    torch.manual_seed(seed)
    model: PreTrainedModel = (
        Phi3ForCausalLM(Phi3Config(**shape)) if architecture == "phi3" else LlamaForCausalLM(LlamaConfig(**shape))
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    open_to_readers(folder)  # the pods of a quickstart read it as another user
    return folder


def _make_tiny_t5(
    folder: Path, corpus: Iterable[str], hidden_size: int, layers: int, vocab_size: int, seed: int
) -> Path:
    """A T5 encoder-decoder whose tokenizer, like T5's own, ends every text with </s>."""
    import torch
    from tokenizers import processors
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = _bpe_tokenizer(
        corpus, vocab_size, T5_SPECIAL_TOKENS, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    eos = tokenizer.eos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=hidden_size,
        d_kv=hidden_size // 4,
        d_ff=hidden_size * 2,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=4,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
    )
    config.decoder_start_token_id = tokenizer.pad_token_id  # as in every T5: the decoder starts from padding
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    open_to_readers(folder)  # the pods of a quickstart read it as another user
    return folder


def _bpe_tokenizer(corpus: Iterable[str], vocab_size: int, special: list[str], **roles: Any) -> Any:
    """A byte-level BPE tokenizer trained on the corpus; `roles` name its special tokens
    (unk_token, eos_token, ...) as transformers' tokenizers take them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer_model = Tokenizer(models.BPE(unk_token=roles.get("unk_token")))
    tokenizer_model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer_model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer_model.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_model, **roles)
