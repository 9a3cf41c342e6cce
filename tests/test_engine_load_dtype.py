"""Loading a pipeline in float16/bfloat16 from a float32 folder: every weight in that dtype with the libraries'
own values, old VAE key names included, and no float32 copy of the weights held on the way."""

import shutil
import subprocess
import sys
from itertools import chain
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.devices import resident_memory_mib
from harness.pipelines import load_pipeline, load_vae

MODELS = ("unet", "vae", "text_encoder")
# the names SD1.5's own VAE files still use for the mid-block attention (diffusers renames them on load)
OLD_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

# Runs in a fresh process: the resident memory a bfloat16 load adds at its peak, in MiB.
MEASURE_LOAD = """
import sys
import harness
from diffusers import StableDiffusionPipeline  # noqa: F401  (importing it is not part of the load)
from harness.devices import reset_peak_memory, resident_memory_mib
from harness.pipelines import load_pipeline

before = resident_memory_mib()
reset_peak_memory("cpu")
load_pipeline(sys.argv[1], dtype="bfloat16", device="cpu")
print(resident_memory_mib(peak=True) - before)
"""


def assert_same_weights(loaded: torch.nn.Module, expected: torch.nn.Module, dtype: torch.dtype) -> None:
    loaded_state, expected_state = loaded.state_dict(), expected.state_dict()
    assert loaded_state.keys() == expected_state.keys()
    for key, tensor in loaded_state.items():
        assert tensor.dtype == expected_state[key].dtype and torch.equal(tensor, expected_state[key]), key
    tensors = chain(loaded.parameters(), loaded.buffers())  # buffers left out of the state dict too
    assert {tensor.dtype for tensor in tensors if tensor.is_floating_point()} == {dtype}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_weight_loads_in_the_dtype_with_the_libraries_values(tiny_testbed_dir, dtype):
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline(tiny_testbed_dir / "base", dtype=dtype, device="cpu")
    reference = StableDiffusionPipeline.from_pretrained(tiny_testbed_dir / "base", torch_dtype=dtype,
                                                        safety_checker=None, requires_safety_checker=False)
    for name in MODELS:
        assert_same_weights(getattr(pipe, name), getattr(reference, name), dtype)


def test_a_vae_with_old_attention_names_loads_in_the_dtype(tiny_testbed_dir, tmp_path):
    from diffusers import AutoencoderKL

    folder = tmp_path / "vae"
    shutil.copytree(tiny_testbed_dir / "base" / "vae", folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    renamed = {}
    for key, tensor in load_file(weights).items():
        for new, old in OLD_ATTENTION_NAMES.items():
            if ".attentions." in key:
                key = key.replace(f".{new}.", f".{old}.")
        renamed[key] = tensor
    assert any(".query." in key for key in renamed)
    save_file(renamed, weights)
    reference = AutoencoderKL.from_pretrained(tiny_testbed_dir / "base" / "vae", torch_dtype=torch.bfloat16)
    assert_same_weights(load_vae(folder, torch.bfloat16), reference, torch.bfloat16)


@pytest.mark.skipif(resident_memory_mib() is None, reason="reads the resident set from /proc (Linux)")
def test_a_bfloat16_load_never_holds_the_float32_weights(tiny_testbed_dir, tmp_path):
    """The tiny pipeline with a 580 MiB float32 UNet: loading it in bfloat16 adds 0.64 times that at its peak
    (the bfloat16 weights, 0.5, then a tensor in float32, the tokenizer, the libraries' own); casting from a map
    of the whole float32 file, as the libraries do, added 1.56 times (the file and its bfloat16 copy)."""
    from diffusers import UNet2DConditionModel

    base = tmp_path / "base"
    shutil.copytree(tiny_testbed_dir / "base", base, ignore=shutil.ignore_patterns("unet"))
    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(448, 896),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
            norm_num_groups=32,
        )
    unet.to_empty(device="cpu").save_pretrained(base / "unet")  # values do not matter here, only sizes
    float32_mib = sum(path.stat().st_size for path in (base / "unet").glob("*.safetensors")) / 2**20
    del unet
    result = subprocess.run([sys.executable, "-c", MEASURE_LOAD, str(base)], capture_output=True, text=True,
                            cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    added_mib = float(result.stdout.split()[-1])
    assert 0.5 * float32_mib < added_mib < 0.8 * float32_mib, (added_mib, float32_mib)
