"""A float64 numpy statement of EDM2's post-hoc EMA (NVlabs/edm2 training/phema.py and
reconstruct_phema.py), written from its behaviour for the parity tests, one scalar at a time on
purpose (the implementation under test is vectorised). Not the official code.

- A profile of relative std s has exponent g, the largest real root of
  g^3 + 7 g^2 + (16 - s^-2) g + (12 - s^-2).
- Tracking: after the training image count reaches n (n = images so far, including this batch of
  b), ema <- ema + (1 - beta) (net - ema) with beta = (1 - b / n)^(g + 1).
- Snapshot i (time t_i, std s_i) and output (t, s): the inner product of the two responses is
  (g_a + 1)(g_b + 1) (t_a / t_b)^p / ((g_a + g_b + 1) max(t_a, t_b)) with p = g_b when t_a < t_b, else -g_a;
  the weights solve Gram(inputs) X = <inputs, output>, then are divided by their sum.
- Only snapshots with 0 < t_i <= t are used; the output is sum_i X_i * snapshot_i.
"""

import numpy as np


def exponent(std):
    t = float(std) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - t, 12.0 - t])
    return max(r.real for r in roots)


def inner(t_a, s_a, t_b, s_b):
    g_a, g_b = exponent(s_a), exponent(s_b)
    p = g_b if t_a < t_b else -g_a
    return (g_a + 1) * (g_b + 1) * (t_a / t_b) ** p / ((g_a + g_b + 1) * max(t_a, t_b))


def coefficients(snapshots, t_out, s_out, normalise=True):
    """snapshots: [(t_i, s_i)]; returns the weight of each snapshot with 0 < t_i <= t_out."""
    used = [(t, s) for t, s in snapshots if 0 < t <= t_out]
    n = len(used)
    gram = np.zeros((n, n))
    rhs = np.zeros(n)
    for i, (ti, si) in enumerate(used):
        rhs[i] = inner(ti, si, t_out, s_out)
        for j, (tj, sj) in enumerate(used):
            gram[i, j] = inner(ti, si, tj, sj)
    x = np.linalg.solve(gram, rhs)
    return x / x.sum() if normalise else x


def track(params_after_each_step, std, batch_size=1, start=None, t_offset=0):
    """The profile after each listed params (numpy trees as flat lists of arrays), float64; it starts
    as a copy of `start` (the initial params) and update k (1-based) sees n = k * batch_size images."""
    ema = [np.asarray(a, np.float64).copy() for a in (start if start is not None else params_after_each_step[0])]
    g = exponent(std)
    for k, params in enumerate(params_after_each_step, 1):
        n = (k + t_offset) * batch_size
        beta = (1 - batch_size / n) ** (g + 1) if n > 0 else 0.0
        ema = [e + (1 - beta) * (np.asarray(p, np.float64) - e) for e, p in zip(ema, params)]
    return ema


def response(t_out, std, length):
    """The discrete response of profile (t_out, std) over steps 0..length-1 (sums to one): the weight of
    each step's params in the average, a power function of the step, zero after t_out."""
    g = exponent(std)
    t = np.arange(length, dtype=np.float64)
    r = np.where(t <= t_out, (t / t_out) ** g, 0.0)
    return r / r.sum()
