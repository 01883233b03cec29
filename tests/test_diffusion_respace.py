"""Respacing (dit_jax.diffusion.respace): the kept timesteps of every spec, ties rounded half to even,
against the PyTorch statement of the reference, and the refused specs."""

import pytest

from dit_jax.diffusion.respace import space_timesteps


SPECS = [(1000, "250"), (1000, "100"), (1000, "50"), (1000, "25"), (1000, "10"), (1000, "ddim50"),
         (1000, "ddim25"), (1000, "ddim7"), (1000, "10,15,20"), (300, "10,15,20"), (1000, "3"), (1000, "7"),
         (1000, "1"), (4000, "250"), (1000, "1000"), (6, "3")]


def test_space_timesteps_250():
    steps = space_timesteps(1000, "250")
    assert len(steps) == 250 and steps == sorted(steps)
    assert steps[:4] == [0, 4, 8, 12] and steps[-3:] == [991, 995, 999]
    assert steps == sorted({round(i * 999 / 249) for i in range(250)})


def test_space_timesteps_ties_round_half_to_even():
    # (1000, "3"): stride 999/2 = 499.5 -> round(499.5) = 500 (even; half-up would agree here).
    assert space_timesteps(1000, "3") == [0, 500, 999]
    # (1000, "7"): stride 999/6 = 166.5 exactly, so the kept indices are 0, 166.5, 333, 499.5, 666, 832.5, 999
    # (all exact in binary). Half to even: 166.5 -> 166, 499.5 -> 500, 832.5 -> 832 (half-up: 167, 833).
    assert space_timesteps(1000, "7") == [0, 166, 333, 500, 666, 832, 999]
    # (6, "3"): stride 2.5 -> round(2.5) = 2 (half-up would give 3).
    assert space_timesteps(6, "3") == [0, 2, 5]
    # (1000, "25"): stride 999/24 = 41.625, 4 * 41.625 = 166.5 -> 166.
    assert 166 in space_timesteps(1000, "25") and 167 not in space_timesteps(1000, "25")
    # Sections: (300, "10,15,20") splits into 100-step sections starting at 0, 100, 200.
    s = space_timesteps(300, "10,15,20")
    assert len(s) == 45 and s[:2] == [0, 11] and s[9] == 99 and s[10] == 100 and s[-1] == 299
    # ddim: exact integer stride.
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim7") == list(range(0, 1000, 143))   # ceil(1000 / 143) == 7
    assert space_timesteps(1000, "1") == [0]


@pytest.mark.parametrize("num,spec", SPECS)
def test_space_timesteps_equal_reference(reference, num, spec):
    _, ref_diffusion = reference
    ours = space_timesteps(num, spec)
    assert isinstance(ours, list) and ours == sorted(set(ours))
    assert ours == sorted(ref_diffusion.respace.space_timesteps(num, spec))


@pytest.mark.parametrize("spec,match", [
    ("ddim600", "cannot create exactly 600 steps"),    # strides 1 and 2 give 1000 and 500 steps
    ("ddim1", "cannot create exactly 1 steps"),        # stride 999 still gives 2 steps
    ("abc", "bad respacing spec 'abc'"),
    ("10,abc", "bad respacing spec"),
    ("", "bad respacing spec"),
    ("1001", "cannot divide a section of 1000 steps into 1001"),
    ("400,600", "cannot divide a section of 500 steps into 600"),
    ("0", "cannot divide"),
    ("ddimabc", "needs an integer N"),
])
def test_space_timesteps_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(1000, spec)
