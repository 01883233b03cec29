"""The PyTorch reference timed the way its users run it: the official train.py step and sample.py loop.

Run by `dit-jax benchmark --torch` in a process of its own (PyTorch and JAX each load their own
CUDA libraries and each want the GPU's memory), it prints one JSON list of rows:

    python -m dit_jax.benchmark.reference REQUEST.json OUT.json
    python -m dit_jax.benchmark.reference --serve REQUEST.json   # one repetition per stdin line (TorchSession)

Training: `diffusion.training_losses(model, x, t, dict(y=y))`, AdamW (lr 1e-4, no weight decay),
backward, step and the EMA update of every parameter, on latents already on the device, in the
reference's modes: "tf32" (train.py's default), "bf16" (autocast) and "bf16+compile"
(torch.compile on top). Sampling: `p_sample_loop(model.forward_with_cfg, ...)` with the doubled
batch of classifier-free guidance, "tf32" and "bf16". On a CPU only float32 eager runs; the other
modes are listed as unavailable.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import os
import sys
import time

TRAIN_MODES = ("tf32", "bf16", "bf16+compile")
SAMPLE_MODES = ("tf32", "bf16")


def import_reference(path: str):
    """(models module, diffusion package) of an official DiT checkout or tests/torch_reference."""
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "models.py")) or not os.path.isdir(os.path.join(path, "diffusion")):
        raise ValueError(f"{path} has no models.py and diffusion/: pass the root of a DiT checkout "
                         "(or tests/torch_reference)")
    sys.path.insert(0, path)
    return importlib.import_module("models"), importlib.import_module("diffusion")


def _mode_context(torch, mode: str, device: str):
    if mode.startswith("bf16"):
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(torch, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_gib(torch, device: str):
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def _build(models, model: dict, device: str):
    import torch
    torch.manual_seed(0)
    return models.DiT(**model).to(device)


def build_train(models, diffusion_pkg, model: dict, batch: int, mode: str, device: str):
    """One training step of the reference as a closure (built once, called per step)."""
    import torch
    net = _build(models, model, device)
    ema = copy.deepcopy(net).requires_grad_(False)
    diffusion = diffusion_pkg.create_diffusion(timestep_respacing="")
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0)
    fwd = torch.compile(net) if mode.endswith("compile") else net
    size, ch = model["input_size"], model["in_channels"]
    x = torch.randn(batch, ch, size, size, device=device)
    y = torch.randint(0, model["num_classes"], (batch,), device=device)
    ema_params = dict(ema.named_parameters())

    def step():
        t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device)
        with _mode_context(torch, mode, device):
            loss = diffusion.training_losses(fwd, x, t, dict(y=y))["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # train.py's update_ema, decay 0.9999
            for name, p in net.named_parameters():
                ema_params[name].mul_(0.9999).add_(p.data, alpha=1 - 0.9999)
    return step


def time_steps(step, steps: int, device: str) -> float:
    """Seconds per call of `step`, over `steps` calls, the device synchronised at both ends."""
    import torch
    _sync(torch, device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(torch, device)
    return (time.perf_counter() - t0) / steps


def time_train(models, diffusion_pkg, model: dict, batch: int, mode: str, steps: int, warmup: int,
               device: str) -> dict:
    import torch
    step = build_train(models, diffusion_pkg, model, batch, mode, device)
    t0 = time.perf_counter()
    step()  # the first step compiles under torch.compile
    _sync(torch, device)
    compile_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        step()
    _sync(torch, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    dt = time_steps(step, steps, device)
    return dict(img_s=batch / dt, step_ms=1e3 * dt, peak_gib=_peak_gib(torch, device), compile_s=compile_s)


def build_sample(models, diffusion_pkg, model: dict, batch: int, mode: str, sample_steps: int, cfg_scale: float,
                 device: str):
    """One run of the reference's sampling loop (sample.py) as a closure."""
    import torch
    net = _build(models, model, device).eval()
    diffusion = diffusion_pkg.create_diffusion(str(sample_steps))
    size, ch = model["input_size"], model["in_channels"]

    def run():
        z = torch.randn(batch, ch, size, size, device=device)
        y = torch.randint(0, model["num_classes"], (batch,), device=device)
        if cfg_scale > 1:  # sample.py: [z, z] with labels [y, null], the first half kept
            z, y = torch.cat([z, z]), torch.cat([y, torch.full_like(y, model["num_classes"])])
            fn, kwargs = net.forward_with_cfg, dict(y=y, cfg_scale=cfg_scale)
        else:
            fn, kwargs = net.forward, dict(y=y)
        with torch.no_grad(), _mode_context(torch, mode, device):
            diffusion.p_sample_loop(fn, z.shape, z, clip_denoised=False, model_kwargs=kwargs, device=device)
        _sync(torch, device)
    return run


def time_sample(models, diffusion_pkg, model: dict, batch: int, mode: str, sample_steps: int, cfg_scale: float,
                repeats: int, device: str) -> dict:
    import torch
    run = build_sample(models, diffusion_pkg, model, batch, mode, sample_steps, cfg_scale, device)
    t0 = time.perf_counter()
    run()  # warm-up (cuDNN autotuning, allocator)
    first_s = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    dt = time_steps(run, repeats, device)
    return dict(img_s=batch / dt, step_ms=1e3 * dt / sample_steps, peak_gib=_peak_gib(torch, device),
                compile_s=first_s)


def run(request: dict) -> list[dict]:
    """request: reference, model (the reference DiT's constructor arguments), train_batches, steps, warmup,
    sample_batch, sample_steps, cfg_scale, sample_repeats. Returns one row per (kind, batch, mode)."""
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True  # train.py and sample.py set both
    torch.backends.cudnn.allow_tf32 = True
    models, diffusion_pkg = import_reference(request["reference"])
    model = request["model"]
    rows = []

    def row(kind, batch, mode, fn):
        base = dict(kind=kind, impl="torch", batch=batch,
                    setting=f"b{batch} " + (mode if device == "cuda" else "float32 (CPU)"))
        if device == "cpu" and mode != "tf32":
            return dict(base, setting=f"b{batch} {mode}", error="unavailable: needs CUDA")
        try:
            return dict(base, **fn())
        except torch.cuda.OutOfMemoryError:
            return dict(base, error="out of memory")
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()

    for batch in request["train_batches"]:
        for mode in TRAIN_MODES:
            rows.append(row("train", batch, mode, lambda: time_train(
                models, diffusion_pkg, model, batch, mode, request["steps"], request["warmup"], device)))
    if request["sample_steps"]:
        for mode in SAMPLE_MODES:
            rows.append(row("sample", request["sample_batch"], mode, lambda: time_sample(
                models, diffusion_pkg, model, request["sample_batch"], mode, request["sample_steps"],
                request["cfg_scale"], request["sample_repeats"], device)))
    env = dict(torch=torch.__version__, torch_device=torch.cuda.get_device_name() if device == "cuda" else "cpu")
    return [dict(r, **env) for r in rows]


def serve(request: dict, lines, reply) -> None:
    """Time one repetition per request line, so that a caller can interleave the reference's repetitions
    with its own (A B A B ...) and both sides see the same load on a shared machine.

    Each line is JSON: {"kind": "train", "batch": B, "steps": N} (seconds per step over N steps) or
    {"kind": "sample", "batch": B} (seconds per sampling run); `request` is `run`'s (reference, model,
    warmup, sample_steps, cfg_scale). A (kind, batch) is built and warmed up at its first request. The
    reference's default mode only: tf32 (float32 on a CPU). Replies are JSON lines {"seconds": s} or
    {"error": text}; an empty line or end of input stops.
    """
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    models, diffusion_pkg = import_reference(request["reference"])
    model, built = request["model"], {}
    for line in lines:
        if not line.strip():
            break
        try:
            ask = json.loads(line)
            key = (ask["kind"], ask["batch"])
            if key not in built:
                if ask["kind"] == "train":
                    fn = build_train(models, diffusion_pkg, model, ask["batch"], "tf32", device)
                    warm = max(request.get("warmup", 1), 1)
                else:
                    fn = build_sample(models, diffusion_pkg, model, ask["batch"], "tf32", request["sample_steps"],
                                      request["cfg_scale"], device)
                    warm = 1
                for _ in range(warm):
                    fn()
                built[key] = fn
            reply(dict(seconds=time_steps(built[key], ask.get("steps", 1), device)))
        except Exception as e:  # noqa: BLE001 -- the caller decides what a failed repetition means
            reply(dict(error=f"{type(e).__name__}: {e}"))


class TorchSession:
    """The reference in a process of its own, timed one repetition at a time (see `serve`).

        with TorchSession(request) as torch_side:
            for _ in range(repeats):
                ours.append(time_one_repetition())
                theirs.append(torch_side.train(batch, steps))
    """

    def __init__(self, request: dict, timeout: float = 3600):
        import subprocess
        import tempfile
        self._dir = tempfile.TemporaryDirectory()
        path = os.path.join(self._dir.name, "request.json")
        with open(path, "w") as f:
            json.dump(request, f)
        self._proc = subprocess.Popen([sys.executable, "-m", "dit_jax.benchmark.reference", "--serve", path],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, bufsize=1)
        self.timeout = timeout

    def _ask(self, **ask) -> float:
        self._proc.stdin.write(json.dumps(ask) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the PyTorch reference stopped:\n{self._proc.stderr.read()[-3000:]}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the PyTorch reference failed: {answer['error']}")
        return answer["seconds"]

    def train(self, batch: int, steps: int) -> float:
        """Seconds per training step of the reference, over `steps` steps."""
        return self._ask(kind="train", batch=batch, steps=steps)

    def sample(self, batch: int) -> float:
        """Seconds per sampling run of the reference."""
        return self._ask(kind="sample", batch=batch)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=60)
            except Exception:  # noqa: BLE001
                self._proc.kill()
        self._dir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--serve":
        with open(argv[1]) as f:
            request = json.load(f)

        def reply(answer):
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
        serve(request, sys.stdin, reply)
        return 0
    with open(argv[0]) as f:
        request = json.load(f)
    rows = run(request)
    with open(argv[1], "w") as f:
        json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
