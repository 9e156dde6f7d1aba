"""The embedded default base model, built here from nothing, deterministically.

A byte-level BPE tokenizer trained on the bundled general corpus, a small Llama, and a short
pretraining on the same corpus: enough that LoRA has something to adapt and that forgetting of
general text is measurable (a LoRA adapts features the base already has: on random weights
there are none, and it barely learns).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from pedigree.config import TinyModelConfig
from pedigree.errors import PedigreeError

PAD, EOS = "<|pad|>", "<|end|>"
SPECIAL_TOKENS = [PAD, EOS, "<|system|>", "<|user|>", "<|assistant|>"]

# No newline after <|end|>, so a completion ends exactly on the EOS token. The `generation` block
# marks assistant tokens for TRL's assistant_only_loss (without it the mask is silently all zero).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def corpus_documents(path: Path) -> list[str]:
    docs = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    docs = [d for d in docs if d]
    if not docs:
        raise PedigreeError(f"{path}: the pretraining corpus is empty; put one document a line "
                            "in it")
    return docs


def train_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style): every byte is encodable, so no input is ever unknown."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=None,
        clean_up_tokenization_spaces=False,
    )


def llama_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def token_blocks(docs: list[str], tokenizer: PreTrainedTokenizerFast, seq_len: int) -> torch.Tensor:
    """The corpus as one stream (documents separated by EOS) cut into [n, seq_len] blocks."""
    stream: list[int] = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        stream.extend(ids + [tokenizer.eos_token_id])
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len]).view(n, seq_len)


def pretrain(
    model: LlamaForCausalLM, blocks: torch.Tensor, cfg: TinyModelConfig, seed: int
) -> list[tuple[int, float]]:
    """Plain next-token training with AdamW and a cosine schedule; returns (step, loss) pairs."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    warmup = max(1, cfg.pretrain_steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, cfg.pretrain_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    curve = []
    order = torch.randperm(len(blocks), generator=gen)
    cursor = 0
    for step in range(cfg.pretrain_steps):
        if cursor + cfg.batch_size > len(order):  # next epoch, reshuffled
            order, cursor = torch.randperm(len(blocks), generator=gen), 0
        batch = blocks[order[cursor : cursor + cfg.batch_size]]
        cursor += cfg.batch_size
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == cfg.pretrain_steps - 1:
            curve.append((step, loss.item()))
    model.eval()
    return curve


def build_tiny(cfg: TinyModelConfig, seed: int, out_dir: Path) -> dict:
    """Build, pretrain and save the embedded base in `out_dir`; returns pretraining metrics."""
    random.seed(seed)
    torch.manual_seed(seed)
    docs = corpus_documents(Path(cfg.corpus))
    tokenizer = train_tokenizer(docs, cfg.vocab_size)
    model = LlamaForCausalLM(llama_config(cfg, tokenizer))
    blocks = token_blocks(docs, tokenizer, cfg.seq_len)
    curve = pretrain(model, blocks, cfg, seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus_tokens": int(blocks.numel()),
        "pretrain_loss_first": curve[0][1],
        "pretrain_loss_final": curve[-1][1],
        "curve": curve,
    }
