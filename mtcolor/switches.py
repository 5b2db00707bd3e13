"""The model switches of an MT-Color call: the masked-attention mode and implementation and the
ablation switches of the paper's modules (MT Tables III-V).

They are research options, not everyday settings, so a pipeline call takes them as one object
(``pipe(..., switches=MTColorSwitches(use_pmam=False))`` or a dict of the same fields) instead of
six keyword arguments. ``None`` fields take the adapter config's value (a model trained without a
module keeps it switched off by default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .attention.kernels import IMPLS, MODES


@dataclass(frozen=True)
class MTColorSwitches:
    """Switches of one MT-Color call.

    Attributes:
        attention_mode: masked attention mode, ``"renormalized"`` (mask before the softmax) or
            ``"paper"`` (MT eq. 2/7 literally); None = the adapter config's.
        attention_impl: masked attention implementation: ``"auto"``, ``"segments"``,
            ``"sdpa_mask"`` or ``"reference"`` (dense, for tests).
        use_pmam: pixel-level mask attention (MT eq. 1-2); None = the adapter config's.
        use_instance_branch: the masked instance self-attention branch (MT eq. 4-7); None = config.
        use_instance_masks: mask the instance branch by the label map (False = the paper's
            "w/o instance masks" ablation); None = config.
        use_control_residuals: the standard ControlNet residual injection (False: the ControlNet
            reaches the UNet only through PMAM).
    """

    attention_mode: str | None = None
    attention_impl: str = "auto"
    use_pmam: bool | None = None
    use_instance_branch: bool | None = None
    use_instance_masks: bool | None = None
    use_control_residuals: bool = True

    @classmethod
    def coerce(cls, value, name: str = "switches") -> MTColorSwitches:
        """``None`` (all defaults), a dict of fields, or an instance -> a checked instance."""
        if value is None:
            return cls()
        if isinstance(value, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(
                    f'{name} has unknown keys {unknown}; known: {sorted(known)} (e.g. {{"use_pmam": False}}).'
                )
            value = cls(**value)
        if not isinstance(value, cls):
            raise TypeError(
                f"{name} has type {type(value).__name__}; pass an MTColorSwitches, a dict of its fields "
                '(e.g. {"attention_mode": "paper"}) or None.'
            )
        value.check(name)
        return value

    def check(self, name: str = "switches") -> None:
        """Raise ``ValueError`` naming the field, the value received and the choices."""
        if self.attention_mode is not None and self.attention_mode not in MODES:
            raise ValueError(
                f"{name}.attention_mode={self.attention_mode!r}; expected one of {MODES} or None (the "
                "adapter's default)."
            )
        if self.attention_impl not in IMPLS:
            raise ValueError(
                f"{name}.attention_impl={self.attention_impl!r}; expected one of {IMPLS} ('auto' picks one)."
            )
        for field in ("use_pmam", "use_instance_branch", "use_instance_masks"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name}.{field}={value!r}; expected True, False or None (the adapter's).")
        if not isinstance(self.use_control_residuals, bool):
            raise ValueError(f"{name}.use_control_residuals={self.use_control_residuals!r}; expected a bool.")

    @property
    def context_options(self) -> dict:
        """Keywords of :meth:`mtcolor.models.adapter.MTColorAdapter.build_context`."""
        options = asdict(self)
        options.pop("use_control_residuals")
        return {
            "mode": options.pop("attention_mode"),
            "impl": options.pop("attention_impl"),
            **options,
        }
