"""DP-SGD overhead per site architecture: time per step and peak memory, non-private vs DP.

Each configuration runs in a fresh process (so peak RSS belongs to it alone). All use the same
per-sample private loss (fixed public negatives) and the same Adam; DP adds Opacus' per-sample
gradients, clipping, noise and accounting (``auto``: ghost clipping; ``--mode hooks`` for the
alternative). DP runs twice: with the site's secure noise (ChaCha20 keyed from OS entropy, what
sites use) and with torch's seeded generator (Opacus' default, which a coordinator could replay),
to show what unpredictable noise costs. Prints a table and writes
``benchmarks/results/dp_overhead.json``. Target: DP at most 3x the non-private time per step.

    python benchmarks/privacy/dp_overhead.py [--batch 64] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SITES = {
    # the default digits federation
    "img-cnn (cnn-small)": ({"image": "cnn-small"}, "digits"),
    "img-mlp (mlp)": ({"image": "mlp"}, "digits"),
    "txt-bag (bag)": ({"text": "bag"}, "digits"),
    "txt-glove (glove-mlp)": ({"text": "glove-mlp"}, "digits"),
    "pair-cnn-bag": ({"image": "cnn-small", "text": "bag"}, "digits"),
    "pair-mlp-glove": ({"image": "mlp", "text": "glove-mlp"}, "digits"),
    # the openclipart federation (frozen-backbone heads, 64 px CNN)
    "img-effnet (effnet-mlp)": ({"image": "effnet-mlp"}, "openclipart"),
    "img-cnn64 (cnn-small)": ({"image": "cnn-small"}, "openclipart"),
    "txt-minilm (minilm-mlp)": ({"text": "minilm-mlp"}, "openclipart"),
    "pair-linear (effnet+minilm linear)": (
        {"image": "effnet-linear", "text": "minilm-linear"},
        "openclipart",
    ),
    "pair-glove (effnet-mlp+glove-mlp)": ({"image": "effnet-mlp", "text": "glove-mlp"}, "openclipart"),
}
GEOMETRY = {"digits": (28, 1), "openclipart": (64, 3)}


class TorchNoise:
    """Opacus' default noise source (torch's generator), for comparison only."""

    def normal(self, shape, std):  # noqa: ANN001, ANN201
        import torch

        return torch.normal(0.0, std, size=tuple(shape))


def child(name: str, variant: str, batch: int, steps: int, mode: str = "auto") -> dict:
    """One configuration: ``variant`` is ``none`` (no DP), ``secure`` or ``torch`` (DP noise source)."""
    private = variant != "none"
    import torch

    from mmfl.client.privacy.dp_sgd import PrivateTraining, private_losses
    from mmfl.client.privacy.secure_random import SecureRandom
    from mmfl.config import PrivacyConfig
    from mmfl.data.tensors import Tensors
    from mmfl.models.encoders import count_parameters, featurizers_for
    from mmfl.models.multimodal import MultiEncoder

    torch.manual_seed(0)
    archs, dataset = SITES[name]
    size, channels = GEOMETRY[dataset]
    feats = featurizers_for(archs, size, channels)
    model = MultiEncoder(archs, {m: f.shape for m, f in feats.items()}, 256, 10)
    n_public = 1000

    def make_batch() -> Tensors:
        inputs = {}
        for m, f in feats.items():
            inputs[m] = (
                torch.randint(1, 8000, (batch, *f.shape))
                if f.dtype == "int64"
                else torch.rand(batch, *f.shape)
            )
        present = {m: torch.ones(batch, dtype=torch.bool) for m in feats}
        return Tensors(inputs, present, torch.randint(0, 10, (batch,)))

    other = {"image": "text", "text": "image"}
    globals_ = {
        m: torch.nn.functional.normalize(torch.randn(n_public, 256), dim=1) for m in ("image", "text")
    }
    labels = {m: torch.randint(0, 10, (n_public,)) for m in globals_}
    del other
    device = torch.device("cpu")
    data = [make_batch() for _ in range(4)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if private:
        dp = PrivateTraining(
            model,
            PrivacyConfig(enabled=True, grad_sample_mode=mode),
            1e-3,
            0.0,
            1.0,
            batch / 1000,
            batch,
            [],
            SecureRandom(),  # noise from OS entropy, as at a real site
        )
        if variant == "torch":
            dp.optimizer.secure_random = TorchNoise()  # type: ignore[attr-defined]

        def step(x: Tensors) -> None:
            dp.step(lambda: private_losses(model, x, globals_, labels, False, 0.1, device), None)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(x: Tensors) -> None:
            opt.zero_grad(set_to_none=True)
            private_losses(model, x, globals_, labels, False, 0.1, device).mean().backward()
            opt.step()

    for i in range(3):  # warm-up
        step(data[i % 4])
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(data[i % 4])
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "site": name,
        "variant": variant,
        "mode": dp.mode if private else "none",
        "params": count_parameters(model),
        "ms_per_step": 1000 * times[len(times) // 2],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (sites train with one in simulation)"
    )
    parser.add_argument("--child", nargs=2, metavar=("SITE", "VARIANT"))
    parser.add_argument(
        "--mode", default="auto", choices=["auto", "hooks", "ghost"], help="per-sample gradient engine"
    )
    parser.add_argument("--sites", default="", help="comma-separated subset of the site models")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "dp_overhead.json"
    )
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(child(args.child[0], args.child[1], args.batch, args.steps, args.mode)))
        return
    rows = []
    chosen = [s.strip() for s in args.sites.split(",") if s.strip()] or list(SITES)
    for name in chosen:
        pair = {}
        for variant in ("none", "secure", "torch"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    variant,
                    "--batch",
                    str(args.batch),
                    "--steps",
                    str(args.steps),
                    "--threads",
                    str(args.threads),
                    "--mode",
                    args.mode,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            pair[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(
            {
                "site": name,
                "params": pair["none"]["params"],
                "mode": pair["secure"]["mode"],
                "ms_nonprivate": pair["none"]["ms_per_step"],
                "ms_dp": pair["secure"]["ms_per_step"],
                "ms_dp_torch_noise": pair["torch"]["ms_per_step"],
                "ratio": pair["secure"]["ms_per_step"] / pair["none"]["ms_per_step"],
                "peak_mb_nonprivate": pair["none"]["peak_rss_mb"],
                "peak_mb_dp": pair["secure"]["peak_rss_mb"],
            }
        )
        r = rows[-1]
        print(
            f"{name:38s} {r['params']:>9d} {r['mode']:6s} {r['ms_nonprivate']:8.1f} {r['ms_dp']:8.1f} "
            f"{r['ms_dp_torch_noise']:8.1f} {r['ratio']:5.2f}x {r['peak_mb_nonprivate']:7.0f} {r['peak_mb_dp']:7.0f}",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"batch": args.batch, "steps": args.steps, "threads": args.threads, "rows": rows}, indent=2
        )
    )
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"DP-SGD overhead per step (batch {args.batch}, {args.threads} thread, median of {args.steps})"
    )
    for col in (
        "site model",
        "params",
        "mode",
        "ms non-private",
        "ms DP",
        "ms DP, torch noise",
        "DP / non-private",
        "peak MB non-private",
        "peak MB DP",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["site"],
            f"{r['params']:,}",
            r["mode"],
            f"{r['ms_nonprivate']:.1f}",
            f"{r['ms_dp']:.1f}",
            f"{r['ms_dp_torch_noise']:.1f}",
            f"{r['ratio']:.2f}x",
            f"{r['peak_mb_nonprivate']:.0f}",
            f"{r['peak_mb_dp']:.0f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
