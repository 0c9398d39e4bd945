import math

import numpy as np
import pytest
import torch

from vidctrl.adapters.camera import (
    VIDEOX_POSE_HW,
    pack_camera_frames,
    pixel_intrinsics,
    plucker_embedding,
    relative_camera_to_world,
    resample_trajectory,
)

IDENTITY_W2C = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)


def rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def w2c_from_c2w(rot: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """World-to-camera [R | t] of a camera with rotation `rot` (camera->world) at `centre`."""
    r = rot.T
    return np.concatenate([r, (-r @ centre)[:, None]], axis=1)


def random_trajectory(frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w2c = []
    for _ in range(frames):
        rot = (
            rotation("x", rng.uniform(-30, 30))
            @ rotation("y", rng.uniform(-30, 30))
            @ rotation("z", rng.uniform(-10, 10))
        )
        w2c.append(w2c_from_c2w(rot, rng.normal(size=3)))
    intrinsics = np.column_stack(
        [
            rng.uniform(0.4, 0.9, frames),
            rng.uniform(0.6, 1.2, frames),
            np.full(frames, 0.5),
            np.full(frames, 0.5),
        ]
    )
    return intrinsics, np.stack(w2c)


def reference_embedding(intrinsics_px: np.ndarray, w2c: np.ndarray, height: int, width: int) -> np.ndarray:
    """Independent per-pixel derivation in float64: unproject with K^-1, rotate, cross with np.cross."""

    def homogeneous(m: np.ndarray) -> np.ndarray:
        out = np.eye(4)
        out[:3] = m
        return out

    first = homogeneous(w2c[0])
    out = np.zeros((len(w2c), 6, height, width))
    for f, (fx, fy, cx, cy) in enumerate(intrinsics_px):
        c2w = np.eye(4) if f == 0 else first @ np.linalg.inv(homogeneous(w2c[f]))
        k_inv = np.linalg.inv(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]))
        for row in range(height):
            for col in range(width):
                d = k_inv @ np.array([col + 0.5, row + 0.5, 1.0])
                d = c2w[:3, :3] @ (d / np.linalg.norm(d))
                out[f, :3, row, col] = np.cross(c2w[:3, 3], d)
                out[f, 3:, row, col] = d
    return out


def test_identity_camera_rays_pass_through_pixel_centres_with_zero_moment() -> None:
    height, width = 4, 6
    emb = plucker_embedding([[0.5, 0.75, 0.5, 0.5]], IDENTITY_W2C[None], height, width)
    assert emb.shape == (1, 6, height, width) and emb.dtype == torch.float32
    # fx = 0.5 * 6 = 3 px, fy = 0.75 * 4 = 3 px, principal point (3, 2).
    for row in range(height):
        for col in range(width):
            d = np.array([(col + 0.5 - 3) / 3, (row + 0.5 - 2) / 3, 1.0])
            np.testing.assert_allclose(emb[0, 3:, row, col].numpy(), d / np.linalg.norm(d), atol=1e-6)
    assert torch.count_nonzero(emb[0, :3]) == 0
    # The centre of the image is between pixels: the four middle rays are symmetric about the axis.
    np.testing.assert_allclose(emb[0, 3, 1, 2], -emb[0, 3, 1, 3], atol=1e-7)
    np.testing.assert_allclose(emb[0, 4, 1, 2], -emb[0, 4, 2, 2], atol=1e-7)


def test_translated_camera_has_moment_centre_cross_direction() -> None:
    centre = np.array([0.5, -1.0, 2.0])
    w2c = np.stack([IDENTITY_W2C, w2c_from_c2w(np.eye(3), centre)])
    emb = plucker_embedding(np.tile([0.6, 0.9, 0.5, 0.5], (2, 1)), w2c, 5, 7).numpy()
    # Same orientation: directions equal frame 0's; origin is the centre, moment = c x d.
    np.testing.assert_allclose(emb[1, 3:], emb[0, 3:], atol=1e-7)
    expected = np.cross(centre[:, None, None], emb[1, 3:], axis=0)
    np.testing.assert_allclose(emb[1, :3], expected, atol=1e-6)
    assert np.abs(emb[1, :3]).max() > 0.1
    # The moment is perpendicular to the direction (a Plücker line constraint).
    np.testing.assert_allclose((emb[1, :3] * emb[1, 3:]).sum(0), 0, atol=1e-6)


def test_relative_pose_makes_frame_zero_the_identity() -> None:
    _, w2c = random_trajectory(5, seed=0)
    c2w = relative_camera_to_world(w2c)
    assert c2w.dtype == torch.float64 and c2w.shape == (5, 4, 4)
    assert torch.equal(c2w[0], torch.eye(4, dtype=torch.float64))
    first = np.eye(4)
    first[:3] = w2c[0]
    last = np.eye(4)
    last[:3] = w2c[4]
    np.testing.assert_allclose(c2w[4].numpy(), first @ np.linalg.inv(last), atol=1e-12)


def test_first_frame_embedding_ignores_its_absolute_pose() -> None:
    intrinsics = np.array([[0.5, 0.75, 0.5, 0.5]])
    posed = w2c_from_c2w(rotation("y", 40) @ rotation("x", 10), np.array([3.0, 1.0, -2.0]))
    torch.testing.assert_close(
        plucker_embedding(intrinsics, posed[None], 4, 6),
        plucker_embedding(intrinsics, IDENTITY_W2C[None], 4, 6),
    )


def test_embedding_is_invariant_to_a_change_of_world_frame() -> None:
    intrinsics, w2c = random_trajectory(4, seed=1)
    world = np.eye(4)
    world[:3, :3] = rotation("z", 70) @ rotation("x", -20)
    world[:3, 3] = [4.0, -2.0, 1.0]
    moved = np.stack([np.concatenate([m, [[0, 0, 0, 1]]]) @ np.linalg.inv(world) for m in w2c])[:, :3]
    torch.testing.assert_close(
        plucker_embedding(intrinsics, moved, 6, 8),
        plucker_embedding(intrinsics, w2c, 6, 8),
        atol=1e-5,
        rtol=1e-5,
    )


def test_agrees_with_independent_per_pixel_derivation() -> None:
    intrinsics, w2c = random_trajectory(3, seed=2)
    height, width = 6, 10
    ours = plucker_embedding(torch.as_tensor(intrinsics), torch.as_tensor(w2c), height, width)
    pixels = intrinsics * [width, height, width, height]
    np.testing.assert_allclose(ours.numpy(), reference_embedding(pixels, w2c, height, width), atol=2e-6)


@pytest.mark.parametrize(("height", "width"), [(480, 640), (512, 512), (360, 832)])
def test_aspect_correction_matches_cover_resize_and_centre_crop(height: int, width: int) -> None:
    # A 1280x720 recording resized to cover (height, width) and centre-cropped: its focal lengths in
    # pixels are the normalised ones times the resized recording's width and height.
    fx, fy = 0.53, 0.94
    scale = max(height / 720, width / 1280)
    got = pixel_intrinsics([[fx, fy, 0.5, 0.5]], height, width, original_hw=VIDEOX_POSE_HW)[0].numpy()
    np.testing.assert_allclose(got, [fx * 1280 * scale, fy * 720 * scale, width / 2, height / 2], rtol=1e-12)


def test_same_aspect_needs_no_correction_and_off_centre_principal_point_scales_with_target() -> None:
    got = pixel_intrinsics([[0.5, 0.8, 0.25, 0.75]], 360, 640, original_hw=(720, 1280))[0].numpy()
    np.testing.assert_allclose(got, [320, 288, 160, 270])
    np.testing.assert_allclose(pixel_intrinsics([[0.5, 0.8, 0.25, 0.75]], 360, 640)[0].numpy(), got)
    # VideoX-Fun keeps cx * W when the width is cropped (exact only for cx = 0.5): reproduced.
    cropped = pixel_intrinsics([[0.5, 0.8, 0.25, 0.75]], 512, 512, original_hw=(720, 1280))[0].numpy()
    np.testing.assert_allclose(cropped, [0.5 * 512 * 1280 / 720, 0.8 * 512, 0.25 * 512, 0.75 * 512])


def test_crop_equals_slicing_the_full_embedding() -> None:
    intrinsics, w2c = random_trajectory(2, seed=3)
    full = plucker_embedding(intrinsics, w2c, 12, 20, original_hw=VIDEOX_POSE_HW)
    window = plucker_embedding(intrinsics, w2c, 12, 20, original_hw=VIDEOX_POSE_HW, crop=(2, 5, 8, 10))
    torch.testing.assert_close(window, full[:, :, 2:10, 5:15])


def original_packing(embedding: torch.Tensor) -> torch.Tensor:
    """The seed's op sequence, written out: (F, 6, H, W) -> (24, F_latent, H, W)."""
    video = embedding.permute(1, 0, 2, 3)[None]  # b c f h w
    video = torch.cat([video[:, :, :1].repeat(1, 1, 4, 1, 1), video[:, :, 1:]], dim=2).transpose(1, 2)
    b, f, c, h, w = video.shape
    video = video.contiguous().view(b, f // 4, 4, c, h, w).transpose(2, 3)
    return video.contiguous().view(b, f // 4, c * 4, h, w).transpose(1, 2)[0]


def test_packing_81_frames_gives_21_latent_frames_of_24_channels() -> None:
    embedding = torch.randn(81, 6, 2, 3)
    packed = pack_camera_frames(embedding)
    assert packed.shape == (24, 21, 2, 3)
    for c in range(6):
        for k in range(4):
            # Latent frame 0 is frame 0 four times; latent frame j >= 1 holds frames 4j-3 .. 4j.
            torch.testing.assert_close(packed[4 * c + k, 0], embedding[0, c])
            for j in range(1, 21):
                torch.testing.assert_close(packed[4 * c + k, j], embedding[4 * j - 3 + k, c])
    torch.testing.assert_close(packed, original_packing(embedding))


def test_packing_batched_and_single_frame() -> None:
    batch = torch.randn(2, 9, 6, 4, 4)
    packed = pack_camera_frames(batch)
    assert packed.shape == (2, 24, 3, 4, 4)
    torch.testing.assert_close(packed[1], original_packing(batch[1]))
    one = pack_camera_frames(torch.randn(1, 6, 4, 4))
    assert one.shape == (24, 1, 4, 4)


def test_packing_rejects_frame_counts_that_are_not_4k_plus_1() -> None:
    with pytest.raises(ValueError, match=r"4k \+ 1 frames \(cut the clip to 77\)"):
        pack_camera_frames(torch.zeros(80, 6, 2, 2))
    with pytest.raises(ValueError, match="embedding must be"):
        pack_camera_frames(torch.zeros(6, 2, 2))


def test_resample_matches_linear_interpolation_with_aligned_ends() -> None:
    intrinsics, w2c = random_trajectory(7, seed=4)
    new_intrinsics, new_w2c = resample_trajectory(intrinsics, w2c, 25)
    assert new_intrinsics.shape == (25, 4) and new_w2c.shape == (25, 3, 4)
    rows = torch.as_tensor(np.concatenate([intrinsics, w2c.reshape(7, 12)], axis=1))[None, None]
    expected = torch.nn.functional.interpolate(rows, size=(25, 16), mode="bilinear", align_corners=True)[0, 0]
    torch.testing.assert_close(torch.cat([new_intrinsics, new_w2c.reshape(25, 12)], dim=1), expected)
    torch.testing.assert_close(new_w2c[0], torch.as_tensor(w2c[0]))
    torch.testing.assert_close(new_w2c[-1], torch.as_tensor(w2c[-1]))
    single_intrinsics, _ = resample_trajectory(intrinsics, w2c, 1)
    torch.testing.assert_close(single_intrinsics[0], torch.as_tensor(intrinsics[0]))


def test_camera_adapter_takes_the_packed_batch() -> None:
    from vidctrl.models.wan.transformer import WanCameraAdapter

    intrinsics, w2c = random_trajectory(9, seed=5)
    packed = pack_camera_frames(plucker_embedding(intrinsics, w2c, 32, 48))
    adapter = WanCameraAdapter(24, 8, kernel_size=(2, 2), stride=(2, 2), downscale_factor=8)
    features = adapter(packed[None])
    # 9 frames -> 3 latent frames; 32 x 48 pixels -> 4 x 6 latents -> 2 x 3 patches.
    assert features.shape == (1, 8, 3, 2, 3)


def test_bad_inputs_are_reported() -> None:
    with pytest.raises(ValueError, match="intrinsics has 2 frames but w2c has 1"):
        plucker_embedding(np.ones((2, 4)), IDENTITY_W2C[None], 4, 4)
    with pytest.raises(ValueError, match=r"shape \(frames, 4\)"):
        plucker_embedding(np.ones((1, 3)), IDENTITY_W2C[None], 4, 4)
    with pytest.raises(ValueError, match="w2c must have shape"):
        plucker_embedding(np.ones((1, 4)), np.eye(3)[None], 4, 4)
    with pytest.raises(ValueError, match="must be positive"):
        plucker_embedding([[0.0, 1.0, 0.5, 0.5]], IDENTITY_W2C[None], 4, 4)
    with pytest.raises(ValueError, match="NaN"):
        plucker_embedding([[np.nan, 1.0, 0.5, 0.5]], IDENTITY_W2C[None], 4, 4)
    with pytest.raises(ValueError, match="does not fit"):
        plucker_embedding([[0.5, 0.5, 0.5, 0.5]], IDENTITY_W2C[None], 4, 4, crop=(1, 0, 4, 4))
    with pytest.raises(ValueError, match="frame 1 is singular"):
        relative_camera_to_world(np.stack([IDENTITY_W2C, np.zeros((3, 4))]))
    with pytest.raises(ValueError, match="num_frames"):
        resample_trajectory(np.ones((2, 4)), np.stack([IDENTITY_W2C] * 2), 0)


def videox_training_camera_input(rows: np.ndarray, resize_h: int, resize_w: int, crop_h: int,
                                 crop_w: int) -> torch.Tensor:
    """VideoX-Fun's Control-Camera training input, written out from its code (train_control.py:
    `process_pose_params(rows, height=resize_h, width=resize_w)` with a 1280x720 source, torchvision's
    `CenterCrop(closest_size)`, then the repeat / view / transpose packing): (24, F_latent, crop_h, crop_w)."""
    fx, fy, cx, cy = rows[:, 1:5].T.copy()
    if resize_w / resize_h < 1280 / 720:
        fx = resize_h * (1280 / 720) * fx / resize_w
    else:
        fy = resize_w / (1280 / 720) * fy / resize_h
    k = torch.as_tensor(np.stack([fx * resize_w, fy * resize_h, cx * resize_w, cy * resize_h], 1), dtype=torch.float32)
    w2c = np.tile(np.eye(4), (len(rows), 1, 1))
    w2c[:, :3] = rows[:, 7:].reshape(-1, 3, 4)
    c2w = torch.as_tensor(np.array([np.eye(4)] + [w2c[0] @ np.linalg.inv(m) for m in w2c[1:]]), dtype=torch.float32)
    j, i = torch.meshgrid(torch.linspace(0, resize_h - 1, resize_h), torch.linspace(0, resize_w - 1, resize_w),
                          indexing="ij")
    i, j = i.reshape(1, -1) + 0.5, j.reshape(1, -1) + 0.5
    xs, ys = (i - k[:, 2:3]) / k[:, 0:1], (j - k[:, 3:4]) / k[:, 1:2]
    directions = torch.stack([xs, ys, torch.ones_like(xs)], -1)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    rays_d = directions @ c2w[:, :3, :3].transpose(-1, -2)
    rays_o = c2w[:, None, :3, 3].expand_as(rays_d)
    plucker = torch.cat([torch.cross(rays_o, rays_d, dim=-1), rays_d], -1)
    plucker = plucker.reshape(len(rows), resize_h, resize_w, 6).permute(0, 3, 1, 2)
    top, left = round((resize_h - crop_h) / 2.0), round((resize_w - crop_w) / 2.0)
    return original_packing(plucker[:, :, top : top + crop_h, left : left + crop_w])


@pytest.mark.parametrize(("video_h", "video_w"), [(128, 72), (72, 128)], ids=["9:16", "16:9"])
def test_transformer_camera_input_matches_videox_resize_then_crop_geometry(video_h: int, video_w: int,
                                                                            tmp_path) -> None:
    import json

    from vidctrl.data.camera import CameraTrajectory, write_camera_txt
    from vidctrl.data.config import DataConfig
    from vidctrl.data.loader import build_loader
    from vidctrl.data.video import write_video
    from vidctrl.families.wan_fun import WanFunControl, WanFunOptions

    frames, poses = 13, 17  # the file is stretched over the video first, as in the original
    write_video(tmp_path / "v.mp4", [np.full((video_h, video_w, 3), 9 * k, dtype=np.uint8) for k in range(frames)],
                fps=8)
    intrinsics, w2c = random_trajectory(poses, seed=7)
    rows = np.concatenate([np.arange(poses)[:, None], intrinsics, np.zeros((poses, 2)), w2c.reshape(poses, 12)], 1)
    write_camera_txt(tmp_path / "v.txt", CameraTrajectory.from_array(rows))
    (tmp_path / "meta.json").write_text(json.dumps(
        [{"file_path": "v.mp4", "control_file_path": "v.txt", "text": "a room", "type": "video"}]))
    config = DataConfig(train_data_meta=tmp_path / "meta.json", train_data_dir=tmp_path, video_sample_n_frames=9,
                        video_sample_stride=1, video_sample_size=64, image_sample_size=64, token_sample_size=64,
                        enable_bucket=True, train_batch_size=1, seed=3)  # type: ignore[call-arg]
    batch = next(iter(build_loader(config)))
    _, _, crop_h, crop_w, _ = batch["pixels"].shape
    indices = batch["frame_indices"][0].numpy()

    family = WanFunControl("wan2.1-fun-control-camera", WanFunOptions(), train_mode="control_camera_ref")
    ours = family.camera_condition(family.camera_inputs(batch))[0]

    # The frames are resized to cover the bucket (`int` of the scaled side) and centre-cropped.
    if crop_h / video_h > crop_w / video_w:
        resize_h, resize_w = crop_h, int(video_w * crop_h / video_h)
    else:
        resize_h, resize_w = int(video_h * crop_w / video_w), crop_w
    assert (resize_h, resize_w) != (crop_h, crop_w)  # the crop is exercised
    stretched = torch.nn.functional.interpolate(torch.as_tensor(rows)[None, None], size=(frames, 19),
                                                mode="bilinear", align_corners=True)[0, 0].numpy()
    expected = videox_training_camera_input(stretched[indices], resize_h, resize_w, crop_h, crop_w)
    assert ours.shape == expected.shape == (24, (len(indices) - 1) // 4 + 1, crop_h, crop_w)
    assert (ours - expected).abs().max() < 1e-5
