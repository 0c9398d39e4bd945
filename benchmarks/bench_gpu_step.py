"""One training step on a GPU: MFU of Wan2.1 1.3B- and 14B-shaped transformers, and vidctrl's engine
ratio against a hand-written loop, side by side in one run.

    python benchmarks/bench_gpu_step.py                  # CUDA when present, else the CPU mode below
    python benchmarks/bench_gpu_step.py --device cpu     # tiny shapes on the CPU: proves the script works

MFU. One 480x832x81 sample (21 latent frames of 60x104, patch 2: 32,760 tokens), 512 text tokens and
257 CLIP tokens, bf16 autocast over fp32 master weights (as vidctrl trains), gradient checkpointing,
PyTorch SDPA attention (flash attention on Ampere and Hopper), AdamW. The transformers are random,
built on the GPU from the released configs (nothing is downloaded). The 14B shape keeps its released
width (5120, 40 heads, FFN 13824) and as many of its 40 blocks as fit one GPU with fp32 weights,
gradients and AdamW state (16 bytes per parameter); MFU does not depend on the depth, as every block
does the same work. The FLOPs of a step are counted from the shapes (`forward_flops`, below) times 3
(forward + backward); the forward that gradient checkpointing recomputes is not counted (MFU, not
hardware utilisation). The peak is the device's dense bf16 peak (`PEAK_BF16_TFLOPS`, or
`--peak_tflops`).

Engine ratio. `vidctrl train` and a bare loop (the family's encoding, the objective, the denoiser,
backward, clipping and AdamW, nothing else) train the same 1.3B-shaped Wan2.1-Fun Control model (tiny
encoders) on the same 480x832x81 sample; seconds per step between the first and the last logged step.

The CPU mode runs the same code at the tiny model's size (64x64x9) so that a test proves the script.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PRESET = "wan2.1-fun-control-v1.0"
TEXT_TOKENS, CLIP_TOKENS, TEXT_DIM, CLIP_DIM = 512, 257, 4096, 1280
# The released Wan2.1-Fun Control transformers (shared facts: reference/checkpoints key lists).
RELEASED = {"patch_size": [1, 2, 2], "in_channels": 48, "out_channels": 16, "text_dim": TEXT_DIM, "freq_dim": 256,
            "image_dim": CLIP_DIM, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
            "rope_max_seq_len": 1024, "attention_head_dim": 128}
SHAPES = {
    "1.3B": {"num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30, "added_kv_proj_dim": 1536},
    "14B-shape": {"num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40, "added_kv_proj_dim": 5120},
}
TINY = {"num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 64, "num_layers": 2, "added_kv_proj_dim": 32}
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0,
                    "L40S": 362.0, "L40": 181.0, "A10G": 70.0, "4090": 165.0}


@dataclass
class Sample:
    frames: int
    height: int
    width: int

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.frames - 1) // 4 + 1, self.height // 8, self.width // 8

    @property
    def tokens(self) -> int:
        f, h, w = self.latent_shape
        return f * (h // 2) * (w // 2)


def forward_flops(config: dict[str, Any], tokens: int, text_tokens: int = TEXT_TOKENS,
                  clip_tokens: int = CLIP_TOKENS) -> float:
    """FLOPs of one forward pass of a Wan transformer (a multiply-add counts 2), from its shapes.

    Per block, with N video tokens, D = heads x head_dim, F the FFN width, T text and I CLIP tokens:
      self-attention   q, k, v, o projections 4 * 2ND^2; scores QK^T and AV 2 * 2N^2D
      cross-attention  q, o 2 * 2ND^2; k, v of the text 2 * 2TD^2; k, v of the image 2 * 2ID^2;
                       scores and AV over T + I keys 2 * 2N(T + I)D
      FFN              2 * 2NDF
    Outside the blocks: the patch embedding (in_channels x 1x2x2 -> D per token), the output head
    (D -> out_channels x 4 per token) and the text embedder (text_dim -> D -> D per text token); the
    time and CLIP embedders are under 0.01% and left out.
    """
    n, t, i = tokens, text_tokens, clip_tokens
    d = config["num_attention_heads"] * config["attention_head_dim"]
    f = config["ffn_dim"]
    patch = math.prod(config["patch_size"])
    block = (8 * n * d * d + 4 * n * n * d
             + 4 * n * d * d + 4 * t * d * d + 4 * i * d * d + 4 * n * (t + i) * d
             + 4 * n * d * f)
    outside = (2 * n * config["in_channels"] * patch * d + 2 * n * d * config["out_channels"] * patch
               + 2 * t * (config["text_dim"] * d + d * d))
    return config["num_layers"] * block + outside


def parameter_counts(config: dict[str, Any]) -> tuple[int, int]:
    """(parameters of one block, parameters outside the blocks), counted on the meta device."""
    from vidctrl.models.wan.transformer import WanFunControlTransformer3DModel

    counts = []
    for layers in (1, 2):
        with torch.device("meta"):
            model = WanFunControlTransformer3DModel(**{**config, "num_layers": layers})
        counts.append(sum(p.numel() for p in model.parameters()))
    return counts[1] - counts[0], 2 * counts[0] - counts[1]


def blocks_that_fit(config: dict[str, Any], sample: Sample, device: torch.device) -> int:
    """As many blocks as fit with fp32 weights, gradients and AdamW state (16 bytes a parameter), each
    block's checkpointed input, and a working reserve for the one block being recomputed."""
    per_block, outside = parameter_counts(config)
    if device.type != "cuda":
        return config["num_layers"]
    free, _total = torch.cuda.mem_get_info(device)
    d = config["num_attention_heads"] * config["attention_head_dim"]
    activation = sample.tokens * d * 4 * 2  # a block's input, kept for the recomputation (and its gradient)
    working = 24 * 2**30  # one block's recomputed activations, SDPA workspace, the allocator's slack
    fit = int((0.92 * free - working - 16 * outside) // (16 * per_block + activation))
    return max(1, min(config["num_layers"], fit))


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per call of `step`, after `warmup` calls."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def measure_mfu(name: str, config: dict[str, Any], sample: Sample, device: torch.device, steps: int,
                peak_tflops: float | None) -> dict[str, Any]:
    """One training step of the transformer alone (the MFU row)."""
    from vidctrl.models.wan.transformer import WanFunControlTransformer3DModel

    config = {**config, "num_layers": blocks_that_fit(config, sample, device)}
    generator = torch.Generator(device).manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with torch.device(device):
        model = WanFunControlTransformer3DModel(**config)
    model.enable_gradient_checkpointing()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, eps=1e-10, fused=device.type == "cuda")
    f, h, w = sample.latent_shape
    hidden = torch.randn(1, config["in_channels"], f, h, w, device=device, generator=generator)
    target = torch.randn(1, config["out_channels"], f, h, w, device=device, generator=generator)
    text = torch.randn(1, TEXT_TOKENS, config["text_dim"], device=device, generator=generator)
    image = torch.randn(1, CLIP_TOKENS, config["image_dim"], device=device, generator=generator)
    timestep = torch.tensor([500], device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(hidden_states=hidden, timestep=timestep, encoder_hidden_states=text,
                        encoder_hidden_states_image=image, return_dict=False)[0]
        loss = (out.float() - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = time_steps(step, device, warmup=2 if device.type == "cuda" else 1, steps=steps)
    flops = 3 * forward_flops(config, sample.tokens)
    achieved = flops / seconds / 1e12
    peak_memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    parameters = sum(p.numel() for p in model.parameters())
    return {"model": name, "blocks": f"{config['num_layers']}/{SHAPES.get(name, TINY)['num_layers']}",
            "params_b": parameters / 1e9, "tokens": sample.tokens, "s_per_step": seconds,
            "tokens_per_s": sample.tokens / seconds, "tflops": achieved,
            "mfu": achieved / peak_tflops if peak_tflops else None, "peak_gib": peak_memory}


def engine_ratio(config: dict[str, Any], sample: Sample, device: torch.device, steps: int) -> dict[str, float]:
    """`vidctrl train` against a bare loop on the same model and sample: seconds per step of each."""
    from vidctrl.cli import main as vidctrl
    from vidctrl.data.layouts import write_layout
    from vidctrl.data.synthetic import make_sample_dataset
    from vidctrl.models.wan.tiny import write_tiny_wan

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        records = make_sample_dataset(root / "data", num_videos=1, num_images=0,
                                      sizes=[(sample.height, sample.width)], frames=[sample.frames], fps=[16])
        write_layout(records, root / "data", "videox")
        overrides = {k: v for k, v in config.items() if k in ("num_attention_heads", "attention_head_dim", "ffn_dim",
                                                                "num_layers")}
        write_tiny_wan(root / "model", PRESET, transformer_config=overrides)
        flags = ["--preset", PRESET, "--pretrained_model_name_or_path", str(root / "model"),
                 "--train_data_meta", str(root / "data" / "metadata.json"), "--train_data_dir", str(root / "data"),
                 "--fix_sample_size", str(sample.height), str(sample.width), "--video_sample_n_frames",
                 str(sample.frames), "--video_sample_stride", "1", "--train_batch_size", "1", "--seed", "3",
                 "--learning_rate", "1e-5", "--trainable_modules", ".", "--gradient_checkpointing",
                 "--mixed_precision", "bf16", "--dataloader_num_workers", "0"]
        bare = bare_step_time(flags, device, steps)
        out = root / "run"
        assert vidctrl(["train", *flags, "--output_dir", str(out), "--max_train_steps", str(steps + 1),
                        "--checkpointing_steps", str(10 * steps), "--report_to", "none"]) == 0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        ours = (rows[-1]["time"] - rows[0]["time"]) / (len(rows) - 1)
    return {"bare": bare, "vidctrl": ours, "ratio": ours / bare}


def bare_step_time(flags: list[str], device: torch.device, steps: int) -> float:
    """What one would write by hand: the family's encoding, the objective, the denoiser, AdamW."""
    from vidctrl.config.train import parse_train_config
    from vidctrl.data.loader import build_loader
    from vidctrl.families import family_for_preset

    config = parse_train_config(flags)
    torch.manual_seed(3)
    family = family_for_preset(PRESET).from_config(config)
    family.load(Path(config.model.pretrained_model_name_or_path), dtype=torch.bfloat16, device=device)
    net = family.denoiser
    net.enable_gradient_checkpointing()
    net.float().train()
    objective = family.build_objective(config.objective, rank=0, world_size=1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5, eps=1e-10)
    loader = build_loader(config.data)
    generator = torch.Generator().manual_seed(3)
    stamps: list[float] = []
    while len(stamps) <= steps:
        for batch in loader:
            encoded = family.encode(batch, generator=generator)
            noised = objective.prepare(encoded.latents, generator)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                prediction = family.predict(net, encoded, noised.noisy, noised.timestep)
            loss = objective.loss(prediction.float(), noised)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stamps.append(time.perf_counter())
            if len(stamps) > steps:
                break
    del family, net, optimizer
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (CUDA when present)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 5 on CUDA, 2 on the CPU)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    parser.add_argument("--skip_engine", action="store_true", help="measure MFU only")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        sample = Sample(81, 480, 832)
        shapes = {name_: {**RELEASED, **shape} for name_, shape in SHAPES.items()}
        steps = args.steps or 5
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        name, peak = "cpu", args.peak_tflops
        sample = Sample(9, 64, 64)
        tiny = {**RELEASED, **TINY, "text_dim": 32, "image_dim": 32}
        shapes = {"tiny": tiny}
        steps = args.steps or 2
    print(f"device: {name}; dense bf16 peak: {f'{peak:.0f} TFLOP/s' if peak else 'unknown (pass --peak_tflops)'}")
    print(f"sample: {sample.height}x{sample.width}x{sample.frames}, {sample.tokens} tokens; bf16 autocast, fp32 "
          "weights, gradient checkpointing, SDPA, AdamW")
    rows = [measure_mfu(label, config, sample, device, steps, peak) for label, config in shapes.items()]
    print(f"\n{'model':<10} {'blocks':>6} {'params':>7} {'s/step':>8} {'tokens/s':>9} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'peak GiB':>8}")
    for row in rows:
        mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "n/a"
        print(f"{row['model']:<10} {row['blocks']:>6} {row['params_b']:>6.2f}B {row['s_per_step']:>8.3f} "
              f"{row['tokens_per_s']:>9.0f} {row['tflops']:>8.2f} {mfu:>6} {row['peak_gib']:>8.1f}")
    ratio = None
    if not args.skip_engine:
        engine_config = shapes.get("1.3B", next(iter(shapes.values())))
        ratio = engine_ratio(engine_config, sample, device, steps)
        print(f"\nengine: bare loop {ratio['bare']:.3f} s/step, vidctrl train {ratio['vidctrl']:.3f} s/step, "
              f"ratio {ratio['ratio']:.3f} ({'1.3B' if device.type == 'cuda' else 'tiny'} shape, same sample)")
    mfus = ", ".join(f"{100 * r['mfu']:.1f}% ({r['model']})" if r["mfu"] is not None else f"n/a ({r['model']}, "
                     f"{name})" for r in rows)
    engine = f"{ratio['ratio']:.3f}" if ratio else "not measured"
    print(f"MFU {mfus}; engine ratio {engine}")


if __name__ == "__main__":
    main()
