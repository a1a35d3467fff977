"""More timm and torchvision networks through zoo_matrix's cells (forced pruning, slim, export, parity).

    .venv-zoo/bin/python benchmarks/results/autopilot-thirtyfourth/zoo_sweep.py [NAME ...] [--methods ...]

One process per model (a timeout of 900 s each); one JSON line per cell in zoo-sweep.jsonl beside this file."""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import zoo_matrix  # noqa: E402

EXTRA = {
    # timm: (constructor, kwargs, input size, what)
    "mobilevit_xxs": ("mobilevit_xxs", {}, 64, "MobileViT: unfold patches into a transformer, fold back, concat"),
    "ghostnet_100": ("ghostnet_100", {}, 64, "Ghost modules: a cheap depthwise op on half the channels, concat, slice"),
    "levit_128s": ("levit_128s", {"img_size": 64}, 64, "LeViT: attention with biases over positions, BN on Linear"),
    "poolformer_s12": ("poolformer_s12", {}, 64, "PoolFormer: pooling as token mixer, GroupNorm(1), layer scale"),
    "convmixer_768_32": ("convmixer_768_32", {}, 32, "ConvMixer: depthwise residual, BN after GELU"),
    "edgenext_xx_small": ("edgenext_xx_small", {}, 64, "EdgeNeXt: split depthwise transposed attention (XCA)"),
    "repvgg_a0": ("repvgg_a0", {}, 64, "RepVGG: 3x3 + 1x1 + identity BN branches summed"),
    "dla34": ("dla34", {}, 64, "DLA: tree aggregation nodes concatenating levels"),
    "xception41": ("xception41", {}, 64, "Xception: separable convolutions, residual blocks"),
    "cspresnet50": ("cspresnet50", {}, 64, "CSP: channel split into a dense path and a shortcut, concat"),
    "rexnet_100": ("rexnet_100", {}, 64, "ReXNet: partial residual (x[:, :C] += shortcut)"),
    "resmlp_12_224": ("resmlp_12_224", {"img_size": 64}, 64, "ResMLP: Affine norms, a token-mixing Linear"),
    "mixer_s16_224": ("mixer_s16_224", {"img_size": 64}, 64, "MLP-Mixer"),
    "deit_tiny_distilled_patch16_224": ("deit_tiny_distilled_patch16_224", {"img_size": 32}, 32,
                                        "DeiT distilled: two heads averaged at inference"),
    "efficientformer_l1": ("efficientformer_l1", {}, 224, "EfficientFormer: 4-d pooling blocks then 3-d attention"),
    "fastvit_t8": ("fastvit_t8", {}, 64, "FastViT: reparameterisable MobileOne blocks, RepMixer"),
    "mobileone_s0": ("mobileone_s0", {}, 64, "MobileOne: over-parameterised branches summed"),
    "nf_resnet26": ("nf_resnet26", {}, 64, "NF-ResNet: weight-standardised convolutions (ScaledStdConv2d), no BN"),
    "dpn68": ("dpn68", {}, 64, "DPN: dual paths, a residual slice and a dense concat"),
    "selecsls42b": ("selecsls42b", {}, 64, "SelecSLS: selective concatenations"),
    "res2net50_14w_8s": ("res2net50_14w_8s", {}, 64, "Res2Net: split, hierarchical residual convs, concat"),
    "skresnet18": ("skresnet18", {}, 64, "SKNet: selective kernel, softmax over branches"),
    "ecaresnet26t": ("ecaresnet26t", {}, 64, "ECA: a 1-d convolution over channels as the gate"),
    "botnet26t_256": ("botnet26t_256", {"img_size": 64}, 64, "BoTNet: self-attention with relative positions in a conv"),
    "lcnet_050": ("lcnet_050", {}, 64, "PP-LCNet: hardswish, SE, a 1x1 conv head after pooling"),
    "cs3darknet_s": ("cs3darknet_s", {}, 64, "CSP-Darknet"),
    "ese_vovnet19b_slim": ("ese_vovnet19b_slim", {}, 64, "VoVNet: one-shot aggregation, effective SE"),
    "gernet_s": ("gernet_s", {}, 64, "GENet"),
    "mobilenetv4_conv_small": ("mobilenetv4_conv_small", {}, 64, "MobileNetV4: universal inverted bottlenecks"),
    "efficientvit_b0": ("efficientvit_b0", {}, 64, "EfficientViT (MIT): ReLU linear attention"),
    "convnextv2_atto": ("convnextv2_atto", {}, 64, "ConvNeXt V2: global response normalisation (GRN)"),
    "swin_tiny_patch4_window7_224": ("swin_tiny_patch4_window7_224", {"img_size": 56, "window_size": 7}, 56,
                                     "Swin: shifted windows (roll), relative position bias"),
    "pvt_v2_b0": ("pvt_v2_b0", {}, 64, "PVT v2: spatial-reduction attention, depthwise conv in the MLP"),
    "tiny_vit_5m_224": ("tiny_vit_5m_224", {}, 224, "TinyViT"),
    "repvit_m0_9": ("repvit_m0_9", {}, 64, "RepViT"),
    "hgnetv2_b0": ("hgnetv2_b0", {}, 64, "HGNetV2: light blocks aggregated"),
    "starnet_s1": ("starnet_s1", {}, 64, "StarNet: elementwise product of two branches"),
    "coat_tiny": ("coat_tiny", {"img_size": 64}, 64, "CoaT: conv-attention, factorised"),
    "cait_xxs24_224": ("cait_xxs24_224", {"img_size": 32}, 32, "CaiT: talking heads, class attention"),
    "convit_tiny": ("convit_tiny", {"img_size": 32}, 32, "ConViT: gated positional self-attention"),
    "resnest14d": ("resnest14d", {}, 64, "ResNeSt: split attention over radix groups"),
    "inception_next_tiny": ("inception_next_tiny", {}, 64, "InceptionNeXt: split depthwise branches"),
}
TV = {
    "swin_t": ("swin_t", {}, 64, "torchvision Swin-T"),
    "inception_v3": ("inception_v3", {"aux_logits": False, "init_weights": False}, 96, "Inception-v3"),
    "vgg11_bn": ("vgg11_bn", {}, 32, "VGG-11 with BN, adaptive pool to 7x7 then a large classifier"),
    "resnext50_32x4d": ("resnext50_32x4d", {}, 64, "ResNeXt: grouped 3x3"),
    "maxvit_t": ("maxvit_t", {}, 224, "MaxViT: block and grid attention, MBConv"),
    "efficientnet_v2_s": ("efficientnet_v2_s", {}, 64, "EfficientNetV2: fused MBConv"),
    "alexnet": ("alexnet", {}, 64, "AlexNet"),
    "regnet_x_400mf": ("regnet_x_400mf", {}, 64, "RegNetX"),
    "mobilenet_v3_large": ("mobilenet_v3_large", {}, 64, "MobileNetV3-Large"),
}
for name, (ctor, kw, size, what) in EXTRA.items():
    zoo_matrix.MODELS[name] = ("timm", ctor, kw, size, what)
for name, (ctor, kw, size, what) in TV.items():
    zoo_matrix.MODELS[name] = ("torchvision", ctor, kw, size, what)
NAMES = list(EXTRA) + list(TV)

if __name__ == "__main__":
    args = sys.argv[1:]
    methods = list(zoo_matrix.METHODS)
    if "--methods" in args:
        i = args.index("--methods")
        methods, args = args[i + 1:], args[:i]
    if args and args[0] == "--one":
        zoo_matrix.child(args[1], methods, 2, 0.5, 0, Path(args[2]))
        sys.exit(0)
    out_all = HERE / "zoo-sweep.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in args or NAMES:
        with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as f:
            out = Path(f.name)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", name, str(out), "--methods", *methods],
                                  env=env, capture_output=True, text=True, timeout=900)
            problem = None if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1:]
        except subprocess.TimeoutExpired:
            problem = "timeout 900 s"
        done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        out.unlink()
        for cell in done:
            print(f"{name:>32} {cell['method']:>10}: {zoo_matrix._cell_text(cell)}", flush=True)
            for n in cell.get("notes", []):
                print(f"{'':>44} note: {n[:300]}", flush=True)
            with open(out_all, "a") as f:
                f.write(json.dumps(cell) + "\n")
        if problem or len(done) < len(methods):
            print(f"{name:>32}: PROCESS {problem}", flush=True)
        print(f"{name:>32}  ({time.perf_counter() - t0:.0f} s)", flush=True)
