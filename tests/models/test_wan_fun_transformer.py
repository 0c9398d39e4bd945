"""WanFunControlTransformer3DModel: the V1.1 reference tokens, the camera adapter, diffusers compatibility."""

import pytest
import torch
from diffusers import WanTransformer3DModel

from vidctrl.models.wan import WanFunControlTransformer3DModel, tiny_configs

FRAMES, SIZE = 3, 8  # latent grid of a 9-frame 64x64 video


@pytest.fixture(autouse=True)
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, previous))  # at most 2, and no more than an xdist worker's share
    yield
    torch.set_num_threads(previous)


def tiny(preset: str) -> WanFunControlTransformer3DModel:
    torch.manual_seed(0)
    return WanFunControlTransformer3DModel(**tiny_configs(preset, vocab_size=98)["transformer"]).eval()


def inputs(model: WanFunControlTransformer3DModel, frames: int = FRAMES) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(1, model.config.in_channels, frames, SIZE, SIZE, generator=g),
        "timestep": torch.tensor([700]),
        "encoder_hidden_states": torch.randn(1, 512, model.config.text_dim, generator=g),
        "encoder_hidden_states_image": torch.randn(1, 17, model.config.image_dim, generator=g),
    }


def test_reference_tokens_behave_as_a_leading_frame_at_rotary_position_zero():
    """VideoX-Fun prepends the ref_conv tokens and grows the frame grid by one: the reference is
    frame 0 and the video frames 1..F. With ref_conv set to the patch embedding of the first 16
    channels, that must equal running the video with the reference as an extra first frame."""
    model = tiny("wan2.1-fun-control-v1.1")
    with torch.no_grad():
        model.ref_conv.weight.copy_(model.patch_embedding.weight[:, :16, 0])
        model.ref_conv.bias.copy_(model.patch_embedding.bias)
    args = inputs(model)
    reference = torch.randn(1, 16, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    leading = torch.cat([reference, torch.zeros(1, 32, SIZE, SIZE)], dim=1).unsqueeze(2)
    with torch.no_grad():
        with_ref = model(**args, full_ref_latents=reference).sample
        as_frame = model(
            **{**args, "hidden_states": torch.cat([leading, args["hidden_states"]], dim=2)}
        ).sample
        without = model(**args).sample
    assert with_ref.shape == (1, 16, FRAMES, SIZE, SIZE)
    torch.testing.assert_close(with_ref, as_frame[:, :, 1:], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(with_ref, without, atol=1e-4)
    # a one-frame 5-D reference is accepted too
    with torch.no_grad():
        torch.testing.assert_close(model(**args, full_ref_latents=reference.unsqueeze(2)).sample, with_ref)


def test_camera_adapter_output_is_added_to_the_patch_embeddings():
    model = tiny("wan2.1-fun-control-camera")
    args = inputs(model)
    camera = torch.randn(1, 24, FRAMES, 8 * SIZE, 8 * SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        features = model.control_adapter(camera)
        assert features.shape == (1, 32, FRAMES, SIZE // 2, SIZE // 2)
        hook = model.patch_embedding.register_forward_hook(lambda module, inp, out: out + features)
        added_by_hand = model(**args).sample
        hook.remove()
        with_camera = model(**args, camera_embedding=camera).sample
    torch.testing.assert_close(with_camera, added_by_hand)


def test_conditions_a_model_cannot_take_are_errors_not_silently_dropped():
    v10 = tiny("wan2.1-fun-control-v1.0")
    args = inputs(v10)
    with pytest.raises(ValueError, match="no ref_conv"):
        v10(**args, full_ref_latents=torch.zeros(1, 16, SIZE, SIZE))
    with pytest.raises(ValueError, match="no control_adapter"):
        v10(**args, camera_embedding=torch.zeros(1, 24, FRAMES, 64, 64))
    v11 = tiny("wan2.1-fun-control-v1.1")
    with pytest.raises(ValueError, match="reference must be encoded at the video's resolution"):
        v11(**inputs(v11), full_ref_latents=torch.zeros(1, 16, 2 * SIZE, SIZE))
    camera = tiny("wan2.1-fun-control-camera")
    with pytest.raises(ValueError, match="pack 4 frames per latent frame"):
        camera(**inputs(camera), camera_embedding=torch.zeros(1, 24, FRAMES, 32, 32))


def test_fun_modules_train_with_gradient_checkpointing():
    for preset, extra in [
        ("wan2.1-fun-control-v1.1", {"full_ref_latents": torch.randn(1, 16, SIZE, SIZE)}),
        ("wan2.1-fun-control-camera", {"camera_embedding": torch.randn(1, 24, FRAMES, 64, 64)}),
    ]:
        model = tiny(preset).train()
        model.enable_gradient_checkpointing()
        model(**inputs(model), **extra).sample.square().mean().backward()
        fun = model.ref_conv if model.ref_conv is not None else model.control_adapter
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fun.parameters())
        assert model.blocks[0].attn1.to_q.weight.grad is not None


def test_plain_diffusers_loads_a_saved_v10_model_and_computes_the_same(tmp_path):
    model = tiny("wan2.1-fun-control-v1.0")
    model.save_pretrained(tmp_path)
    plain = WanTransformer3DModel.from_pretrained(tmp_path).eval()
    assert type(plain) is WanTransformer3DModel
    args = inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(plain(**args).sample, model(**args).sample)


def test_plain_diffusers_drops_ref_conv_of_a_saved_v11_model(tmp_path):
    """Documented behaviour: diffusers reports ref_conv.* as unused weights and ignores them, so the
    model runs there without reference tokens (the rest of the weights are intact)."""
    model = tiny("wan2.1-fun-control-v1.1")
    model.save_pretrained(tmp_path)
    plain = WanTransformer3DModel.from_pretrained(tmp_path).eval()
    assert not hasattr(plain, "ref_conv")
    args = inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(plain(**args).sample, model(**args).sample)
