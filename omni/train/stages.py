"""Which parts train in each stage (spec §13) and the stage's default learning rates (peak -> end of the cosine)."""

from __future__ import annotations

from dataclasses import dataclass

from ..model import OmniLM

ADAPTERS = ("whisper_adapter", "vision_adapter")  # module names in OmniLM
LLM = ("transformer",)  # the Qwen2 body; its wte is also the (tied) head


@dataclass(frozen=True)
class Stage:
    name: str
    trains: tuple[str, ...]  # parts: "adapters", "llm"
    answers: str  # "text": every sample in its text-answer form; "speech": speech form where a target speech exists;
    # "status": the listening streams, labelled n-irq / irq frame by frame
    audio_only: bool  # only samples with a spoken question (the adapters need an input to adapt)
    lr: dict[str, tuple[float, float]]  # part -> (peak, end)
    what: str


STAGES = {
    "1": Stage("1", ("adapters",), "text", True, {"adapters": (1e-3, 2e-5)},
               "encoder adaptation: encoders and LLM frozen, adapters trained on wav->text and image->text"),
    "2": Stage("2", ("llm",), "text", False, {"llm": (2e-4, 2e-6)},
               "modality alignment: adapters frozen, LLM trained on text answers to text, voice and image questions"),
    "3": Stage("3", ("adapters", "llm"), "speech", False, {"adapters": (2e-5, 2e-6), "llm": (2e-5, 2e-6)},
               "multimodal output: adapters and LLM trained on text + speech answers (delayed rows, batch of 2)"),
    "irq": Stage("irq", ("llm",), "status", False, {"llm": (2e-5, 2e-6)},
                 "semantic interruption: LLM trained to say n-irq / irq after each SNAC frame of a listening row"),
}


def part_modules(part: str) -> tuple[str, ...]:
    return ADAPTERS if part == "adapters" else LLM


def select_trainable(lm: OmniLM, stage: Stage) -> dict[str, list]:
    """Freeze everything, then unfreeze the stage's parts; -> part -> its parameters (tied weights once)."""
    lm.requires_grad_(False)
    groups = {}
    for part in stage.trains:
        params = []
        for name in part_modules(part):
            getattr(lm, name).requires_grad_(True)
            params += list(getattr(lm, name).parameters())
        groups[part] = params
    return groups


def describe(lm: OmniLM, groups: dict[str, list]) -> list[str]:
    """Lines saying which parameters train and which are frozen, with counts."""
    seen, lines = set(), []
    trained = {id(p) for ps in groups.values() for p in ps}
    counts = {"trained": 0, "frozen": 0}
    for name, p in lm.named_parameters():  # tied lm_head.weight is listed once, as transformer.wte.weight
        if id(p) in seen:
            continue
        seen.add(id(p))
        counts["trained" if id(p) in trained else "frozen"] += p.numel()
    for part, ps in groups.items():
        lines.append(f"trains {part}: {sum(p.numel() for p in ps):,} parameters "
                     f"({', '.join(part_modules(part))}{' incl. the tied wte/lm_head' if part == 'llm' else ''})")
    lines.append(f"frozen: {counts['frozen']:,} LM parameters + the Whisper, CLIP and SNAC encoders")
    return lines
