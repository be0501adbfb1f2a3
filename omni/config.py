"""Model dimensions read from `model_config.yaml` (LitGPT `Config` keys) and the special-token ids they imply."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import yaml

from .errors import CheckpointError

# Values of the official architecture that this implementation relies on. A config that says otherwise
# is a different model and would load but compute something else, so it is rejected up front.
_REQUIRED = {
    "mlp_class_name": "LLaMAMLP",
    "norm_class_name": "RMSNorm",
    "parallel_residual": False,
    "bias": False,
    "lm_head_bias": False,
    "scale_embeddings": False,
    "post_adapter": False,
}

N_SPECIAL = 64  # special slots at the top of the text and of each audio vocabulary
N_AUDIO_LAYERS = 7  # token rows 0..6 are SNAC code layers, row 7 is text


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int
    n_embd: int
    n_head: int
    n_query_groups: int
    head_size: int
    intermediate_size: int
    block_size: int
    padded_vocab_size: int
    text_vocab_size: int  # padded text vocabulary (152000): Qwen2 rows + 64 specials
    audio_vocab_size: int  # per audio layer (4160): 4096 SNAC codes + 64 specials
    whisper_adapter_dim: int
    vision_adapter_dim: int
    norm_eps: float = 1e-6
    rope_base: float = 10000.0
    rotary_percentage: float = 1.0
    add_qkv_bias: bool = True
    tie_word_embeddings: bool = True
    n_audio_layers: int = N_AUDIO_LAYERS
    # the semantic interruption's status tokens (spec §11; free text specials), set by `omni train --stage irq`:
    # a checkpoint that has them can say, frame by frame while it speaks, whether it was told to stop
    irq_token: int | None = None
    n_irq_token: int | None = None

    @property
    def rope_n_elem(self) -> int:
        return int(self.rotary_percentage * self.head_size)

    @property
    def q_per_kv(self) -> int:
        return self.n_head // self.n_query_groups

    @property
    def qkv_size(self) -> int:
        return (self.n_head + 2 * self.n_query_groups) * self.head_size

    @classmethod
    def from_dict(cls, raw: dict, source: str = "model_config.yaml") -> "ModelConfig":
        for key, want in _REQUIRED.items():
            if key in raw and raw[key] != want:
                raise CheckpointError(f"{source}: {key} = {raw[key]!r} is not supported (Mini-Omni2 uses {want!r})")
        raw = dict(raw)
        if raw.get("head_size") is None and "n_embd" in raw and "n_head" in raw:
            raw["head_size"] = raw["n_embd"] // raw["n_head"]  # LitGPT's default
        if raw.get("n_query_groups") is None and "n_head" in raw:
            raw["n_query_groups"] = raw["n_head"]
        names = {f.name for f in fields(cls)}
        kwargs = {k: raw[k] for k in names if k in raw}
        missing = [f.name for f in fields(cls) if f.name not in kwargs and f.default is MISSING]
        if missing:
            raise CheckpointError(f"{source}: missing keys {', '.join(sorted(missing))}")
        cfg = cls(**kwargs)
        want_vocab = cfg.text_vocab_size + cfg.n_audio_layers * cfg.audio_vocab_size
        if cfg.padded_vocab_size != want_vocab:
            raise CheckpointError(f"{source}: padded_vocab_size {cfg.padded_vocab_size} != text_vocab_size + 7 x "
                                  f"audio_vocab_size = {want_vocab}")
        if cfg.n_head % cfg.n_query_groups:
            raise CheckpointError(f"{source}: n_head {cfg.n_head} is not a multiple of n_query_groups {cfg.n_query_groups}")
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise CheckpointError(f"cannot read {path}: {e}") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path} is not a YAML mapping")
        return cls.from_dict(raw, str(path))


@dataclass(frozen=True)
class Vocab:
    """Special ids. Text ids are global; audio ids are local to one layer (0..audio_vocab_size-1)."""

    text_vocab_size: int = 152000
    audio_vocab_size: int = 4160

    # text specials (global ids): 151936.. for the official vocabulary
    @property
    def eot(self) -> int:
        return self.text_vocab_size - N_SPECIAL

    @property
    def pad_t(self) -> int:
        return self.eot + 1

    @property
    def input_t(self) -> int:
        return self.eot + 2

    @property
    def answer_t(self) -> int:
        return self.eot + 3

    @property
    def asr(self) -> int:
        return self.eot + 4

    # audio specials (local ids): 4096.. for the official vocabulary
    @property
    def n_codes(self) -> int:
        return self.audio_vocab_size - N_SPECIAL

    @property
    def eoa(self) -> int:
        return self.n_codes

    @property
    def pad_a(self) -> int:
        return self.n_codes + 1

    @property
    def input_a(self) -> int:
        return self.n_codes + 2

    @property
    def answer_a(self) -> int:
        return self.n_codes + 3

    @property
    def image(self) -> int:
        return self.n_codes + 5

    @property
    def eoimage(self) -> int:
        return self.n_codes + 6

    def layershift(self, local_id: int, layer: int) -> int:
        """Global id of audio token `local_id` on audio layer `layer` (0..6)."""
        return local_id + self.text_vocab_size + self.audio_vocab_size * layer

    @classmethod
    def of(cls, cfg: ModelConfig) -> "Vocab":
        return cls(cfg.text_vocab_size, cfg.audio_vocab_size)
