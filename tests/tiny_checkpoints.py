"""Tiny random checkpoints for the GGUF tests: a small Llama (or another architecture) with a
byte-level BPE tokenizer trained here and a chat template, saved as `save_pretrained` does.
Shared by test_gguf.py and test_export_architectures.py."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|bos|>", "<|user|>", "<|assistant|>", "<|end|>", "<|pad|>"]
# The embedded model's layout (pedigree.train.tiny.CHAT_TEMPLATE), which the Ollama Modelfile
# reproduces, with the BOS text in front.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SAMPLES = [
    "<|user|>Hello there, how are you?<|end|><|assistant|>I'm fine: 12345 tokens!<|end|>",
    "  leading spaces,\ttabs and\nnew lines\n\n",
    "café naïve — 😀 ünïcödé 3.14159",
]
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _corpus() -> list[str]:
    rng = random.Random(0)
    words = ["the", "a", "model", "data", "train", "loss", "token", "chat", "user", "assistant", "hello", "world", "fine", "tune", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "café", "naïve", "ünïcödé", "I'm", "don't", "you're", "1", "22", "333", "2024", "3.14", "—", "😀"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) for _ in range(400)]


def save_tokenizer(directory: Path, pre_tokenizer, add_bos: bool = False) -> None:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        add_bos_token=add_bos,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)


def gpt2_pre_tokenizer():
    return pre_tokenizers.ByteLevel(add_prefix_space=False)


def llama3_pre_tokenizer():
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def save_checkpoint(directory: Path, config, model_class=LlamaForCausalLM) -> Path:
    """A random model with a BPE tokenizer trained here, saved as `save_pretrained` does."""
    save_tokenizer(directory, gpt2_pre_tokenizer())
    random_model(config, model_class).save_pretrained(directory)
    return directory


def random_model(config, model_class=LlamaForCausalLM):
    torch.manual_seed(0)
    model = model_class(config)
    # At the default init, attention is nearly uniform and positions barely matter, so a wrong
    # Q/K layout moves logits by only 1%. Larger Q/K weights make attention sharp: then leaving
    # out the permutation moves them by 20%, which even the Q8_0 bound below catches.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(5)
            layer.self_attn.k_proj.weight.mul_(5)
    return model


def llama_config(**overrides) -> LlamaConfig:
    values = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA: K is permuted with its own head count
        intermediate_size=128,
        vocab_size=416,  # padded past the tokenizer's 400, as real vocabularies often are
        max_position_embeddings=256,
        rope_theta=50000.0,
        tie_word_embeddings=False,
    )
    return LlamaConfig(**(values | overrides))
