"""The training recipe as data: the paper's defaults, its transfer schedule as a list of phases, the demo preset."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from spinecad.models.model import HeadConfig


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs and which backbone layers train in it; the head and level embedding always train."""

    name: str
    epochs: int
    backbone_layers: int | None  # trainable layers at the backbone's output end: 0 = frozen, None = all


# Paper: frozen backbone first, then the last 32 layers unfrozen; head and level embedding train throughout.
# The paper does not say how many of its 30 epochs were frozen: we take the first 3.
PAPER_PHASES: tuple[Phase, ...] = (
    Phase("frozen backbone", 3, 0),
    Phase("last 32 layers unfrozen", 27, 32),
)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a training run's result (its fingerprint guards resumes)."""

    phases: tuple[Phase, ...] = PAPER_PHASES
    lr: float = 1e-4  # AdamW (paper)
    weight_decay: float = 0.02  # (paper)
    batch_size: int = 32  # (paper)
    class_weighted_loss: bool = True  # cross-entropy weighted by inverse class frequency of the train split
    flip_probability: float = 0.5  # random horizontal flip (paper)
    rotation_degrees: float = 10.0  # random rotation (paper; the angle is not stated)
    head: HeadConfig = field(default_factory=HeadConfig)  # the paper's: 256-d level embedding, 512 -> 256 -> 3, dropout
    pretrained: bool = True
    seed: int = 42
    selection: str = "validation macro-F1"  # how the best epoch is chosen
    extra: dict = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return sum(phase.epochs for phase in self.phases)

    def phase_at(self, epoch: int) -> Phase:
        """The phase an epoch (0-based) belongs to."""
        end = 0
        for phase in self.phases:
            end += phase.epochs
            if epoch < end:
                return phase
        raise ValueError(f"epoch {epoch} is past the recipe's {self.epochs} epochs")

    def with_epochs(self, epochs: int) -> Recipe:
        """The same schedule squeezed or stretched to ``epochs`` (the first phase keeps at least one)."""
        first = max(1, round(self.phases[0].epochs * epochs / self.epochs)) if len(self.phases) > 1 else epochs
        first = min(first, epochs - (len(self.phases) > 1))
        rest = [replace(phase, epochs=0) for phase in self.phases[1:]]
        if rest:
            rest[-1] = replace(rest[-1], epochs=epochs - first)
        return replace(self, phases=(replace(self.phases[0], epochs=first), *rest))

    def as_dict(self) -> dict:
        values = asdict(self)
        values["phases"] = [asdict(phase) for phase in self.phases]
        head = values.pop("head")
        values.update(head, hidden_dims=list(head["hidden_dims"]))  # the head flat, as config.json holds it
        return values


PAPER = Recipe()

# The phantom demo: CPU-profile backbones from random init, a smaller head so the committed demo set stays small,
# and a higher learning rate because nothing is pretrained.
DEMO = Recipe(
    phases=(Phase("frozen backbone", 2, 0), Phase("last 32 layers unfrozen", 28, 32)),
    lr=1e-3,
    head=HeadConfig(level_dim=64, hidden_dims=(128, 64), dropout=0.1),
    pretrained=False,
)
