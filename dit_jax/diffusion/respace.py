"""Timestep respacing as the reference does it ("250", "ddim50", "10,15,20")."""

from __future__ import annotations


def space_timesteps(num_timesteps: int, section_counts: str | int | list[int]) -> list[int]:
    """Sorted original timesteps kept by a respacing spec.

    "ddimN" keeps range(0, T, stride) for the exact stride giving N steps. Otherwise the steps are
    split into equal sections (earlier ones one longer when T does not divide) and each section
    keeps `count` steps at a fractional stride. The index is accumulated by repeated addition and
    rounded with Python's round (half to even), exactly as the reference, so that float
    accumulation and ties pick the same integers.
    """
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            try:
                desired = int(spec[len("ddim"):])
            except ValueError:
                raise ValueError(f"bad respacing spec {section_counts!r}: 'ddimN' needs an integer N, e.g. 'ddim50'") from None
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired} steps with an integer stride from {num_timesteps}")
        try:
            section_counts = [int(x) for x in spec.split(",")]
        except ValueError:
            raise ValueError(f"bad respacing spec {section_counts!r}: use e.g. '250', 'ddim50' or '10,15,20'") from None
    elif isinstance(section_counts, int):
        section_counts = [section_counts]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, set()
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if count < 1 or size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count} (spec {section_counts})")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.add(start + round(cur))
            cur += stride
        start += size
    return sorted(steps)
