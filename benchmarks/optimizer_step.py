"""Optimizer kernels on the CPU: Adam's per-tensor loop vs foreach vs fused, per training step.

Why: issue #18 names fused/foreach optimizer steps as a lever. `lightning_modules.classifier.
optimizer_kernel` picks foreach on the CPU (bitwise the per-tensor loop's weights) and fused on
CUDA. This measures what each kernel saves on the CPU, for a whole training step (forward,
backward, step) and for the step alone, on MLPs the search trains: the first DNN (512-512) and
a wide net TPE settles on in some seeds (965-517), batch 128, dropout 0.2, on random inputs (the
time of a step does not depend on the pixel values). Kernels are interleaved within each repeat;
the table gives medians and each kernel's ratio to the per-tensor loop measured in the same run.

    python -m benchmarks.optimizer_step            # 5 repeats x 300 steps per kernel and net
    python -m benchmarks.optimizer_step --quick    # 1 repeat x 20 steps
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from benchmarks._common import cli, integer, machine_line, median, parser, table

STEP_COLUMN = "ms per training step"
HEADER = f"| {STEP_COLUMN} |"  # as the table prints it (the column is as wide as its title)
NETS: dict[str, tuple[int, ...]] = {"512-512 (the first DNN)": (512, 512), "965-517 (wide)": (965, 517)}
KERNELS: dict[str, dict[str, bool]] = {
    "per-tensor loop (reference)": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}
BATCH = 128
DROPOUT = 0.2
LR = 1e-3
SEED = 0
OURS = " (ours on the CPU)"


def time_steps(hidden: Sequence[int], kernel: dict[str, bool], steps: int) -> tuple[float, float]:
    """(milliseconds per training step, of which in `optimizer.step`), after 10 warm-up steps."""
    from lightning_modules.network import build_network

    torch.manual_seed(SEED)
    net = build_network(784, hidden, 10, DROPOUT)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR, **kernel)
    x = torch.randn(BATCH, 784)
    y = torch.randint(0, 10, (BATCH,))
    total = in_step = 0.0
    for i in range(10 + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        before_step = time.perf_counter()
        optimizer.step()
        end = time.perf_counter()
        if i >= 10:
            total += end - start
            in_step += end - before_step
    return 1000 * total / steps, 1000 * in_step / steps


def measure(steps: int, repeats: int) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """Every (net, kernel) `repeats` times, kernels interleaved within each repeat."""
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(repeats):
        for net, hidden in NETS.items():
            for kernel, kwargs in KERNELS.items():
                results.setdefault((net, kernel), []).append(time_steps(hidden, kwargs, steps))
    return results


def report(results: dict[tuple[str, str], list[tuple[float, float]]]) -> str:
    """Medians per net and kernel; the kernel CPU training uses is named by
    `lightning_modules.classifier.optimizer_kernel`, so the table says which it is."""
    from lightning_modules.classifier import optimizer_kernel

    ours = optimizer_kernel("adam", "cpu")
    reference = next(iter(KERNELS))
    rows = []
    for net in NETS:
        ref_total = median([t for t, _ in results[(net, reference)]])
        ref_step = median([s for _, s in results[(net, reference)]])
        for kernel, kwargs in KERNELS.items():
            total = median([t for t, _ in results[(net, kernel)]])
            step = median([s for _, s in results[(net, kernel)]])
            rows.append(
                (net, kernel + OURS * (kwargs == ours), f"{total:.2f}", f"{ref_total / total:.2f}x", f"{step:.3f}", f"{ref_step / step:.2f}x")
            )
    return table(["net", "kernel", STEP_COLUMN, "speed vs reference", "ms in optimizer.step", "step speed vs reference"], rows)


def main(argv: list[str] | None = None) -> int:
    flags = parser(__doc__)
    flags.add_argument("--quick", action="store_true", help="1 repeat x 20 steps")
    flags.add_argument("--steps", type=integer(1, 100_000), default=300, help="timed steps per kernel, net and repeat")
    flags.add_argument("--repeats", type=integer(1, 100), default=5)
    args = flags.parse_args(argv)
    steps, repeats = (20, 1) if args.quick else (args.steps, args.repeats)
    print(f"# optimizer kernels: Adam, batch {BATCH}, {steps} steps x {repeats} repeats")
    print(machine_line() + " (before)")
    print(report(measure(steps, repeats)))
    print(machine_line() + " (after)")
    return 0


if __name__ == "__main__":
    cli(main)
