from pathlib import Path

import numpy as np
import pytest

from vidctrl.data.camera import (
    CameraFileError,
    CameraTrajectory,
    check_camera_txt,
    is_camera_file,
    parse_camera_lines,
    read_camera_txt,
    write_camera_txt,
)
from vidctrl.data.records import DataError

# A line of VideoX-Fun's asset/Pan_Left.txt (frame id 0 on every line, empty first line).
VIDEOX_LINE = (
    "0 0.532139961 0.946026558 0.5 0.5 0 0 1.0 0.0 0.0 0.018518518518518517 0.0 1.0 0.0 0.0 0.0 0.0 1.0 0.0"
)
# The first lines of CameraCtrl's assets/pose_files/0bf152ef84195293.txt (RealEstate10K format).
CAMERACTRL = """https://www.youtube.com/watch?v=QShWPZxTDoE
158692025 0.474812461 0.844111024 0.500000000 0.500000000 0.000000000 0.000000000 0.780003667 0.059620168 -0.622928321 0.726968666 -0.062449891 0.997897983 0.017311305 0.217967188 0.622651041 0.025398925 0.782087326 -1.002211444
158958959 0.474812461 0.844111024 0.500000000 0.500000000 0.000000000 0.000000000 0.743836701 0.064830206 -0.665209770 0.951841944 -0.068305343 0.997446954 0.020830527 0.206496789 0.664861917 0.029942872 0.746365905 -1.084913992
"""


def test_reads_cameractrl_file_skipping_the_url_header(tmp_path: Path) -> None:
    path = tmp_path / "pose.txt"
    path.write_text(CAMERACTRL)
    camera = read_camera_txt(path)
    assert len(camera) == 2
    assert camera.header == "https://www.youtube.com/watch?v=QShWPZxTDoE"
    assert camera.frame_ids.tolist() == [158692025, 158958959]
    np.testing.assert_allclose(camera.intrinsics[0], [0.474812461, 0.844111024, 0.5, 0.5])
    np.testing.assert_allclose(camera.w2c[0, 0], [0.780003667, 0.059620168, -0.622928321, 0.726968666])
    np.testing.assert_allclose(camera.w2c[1, 2, 3], -1.084913992)
    assert camera.reserved.tolist() == [[0, 0], [0, 0]]


def test_reads_videox_style_file_with_empty_header_and_trailing_blank_lines() -> None:
    camera = parse_camera_lines(
        ["\n", VIDEOX_LINE + "\n", VIDEOX_LINE.replace(" ", "\t") + "\n", "\n", "  \n"]
    )
    assert len(camera) == 2
    assert camera.header == ""
    np.testing.assert_allclose(camera.w2c[0], [[1, 0, 0, 0.018518518518518517], [0, 1, 0, 0], [0, 0, 1, 0]])


def test_camera_to_world_inverts_world_to_camera() -> None:
    camera = parse_camera_lines(CAMERACTRL.splitlines())
    product = camera.camera_to_world @ camera.world_to_camera
    np.testing.assert_allclose(product, np.tile(np.eye(4), (2, 1, 1)), atol=1e-9)


def test_write_then_read_gives_back_every_number_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 5
    original = CameraTrajectory(
        intrinsics=rng.uniform(0.1, 1.0, (n, 4)),
        w2c=rng.normal(size=(n, 3, 4)),
        frame_ids=np.array([0, 33366, 66733, 100100, 133466], dtype=np.float64),
        header="https://example.com/clip",
    )
    path = write_camera_txt(tmp_path / "out" / "cam.txt", original)
    back = read_camera_txt(path)
    for name in ("intrinsics", "w2c", "frame_ids", "reserved"):
        assert np.array_equal(getattr(back, name), getattr(original, name)), name
    assert back.header == original.header
    assert path.read_text().splitlines()[1].startswith("0 ")


def test_default_frame_ids_count_frames_and_header_is_empty(tmp_path: Path) -> None:
    trajectory = CameraTrajectory(intrinsics=np.full((3, 4), 0.5), w2c=np.tile(np.eye(4)[:3], (3, 1, 1)))
    text = write_camera_txt(tmp_path / "c.txt", trajectory).read_text()
    lines = text.splitlines()
    assert lines[0] == "" and [line.split()[0] for line in lines[1:]] == ["0", "1", "2"]
    assert all(len(line.split()) == 19 for line in lines[1:])


@pytest.mark.parametrize(
    ("body", "where", "message"),
    [
        (VIDEOX_LINE + " 1.0", "line 2", "20 values, expected 19"),
        (VIDEOX_LINE.rsplit(" ", 1)[0], "line 2", "18 values, expected 19"),
        (VIDEOX_LINE.replace("0.946026558", "abc"), "line 2, value 3", "'abc' is not a number"),
        (VIDEOX_LINE.replace("0.946026558", "nan"), "line 2, value 3", "not a finite number"),
        (VIDEOX_LINE.replace("0.532139961", "0"), "line 2", "must be positive"),
    ],
)
def test_malformed_lines_name_the_file_and_line(tmp_path: Path, body: str, where: str, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("header\n" + body + "\n")
    with pytest.raises(CameraFileError, match=message) as info:
        read_camera_txt(path)
    assert isinstance(info.value, DataError)
    assert info.value.problem.file == str(path)
    assert info.value.problem.where == where
    assert info.value.problem.code == "malformed_camera"


def test_fault_on_a_later_line_reports_that_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("\n" + VIDEOX_LINE + "\n" + VIDEOX_LINE + "\n0 1 2\n")
    with pytest.raises(DataError) as info:
        read_camera_txt(path)
    assert info.value.problem.where == "line 4"


@pytest.mark.parametrize(("text", "message"), [("", "empty"), ("only a header\n\n", "no camera poses")])
def test_files_without_poses_are_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_camera_txt(path)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="camera file not found") as info:
        read_camera_txt(tmp_path / "nope.txt")
    assert info.value.problem.code == "missing_file"


def test_check_warns_when_the_skipped_first_line_is_a_pose(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text(VIDEOX_LINE + "\n" + VIDEOX_LINE + "\n")
    (problem,) = check_camera_txt(path)
    assert problem.code == "camera_header" and problem.severity == "warning" and problem.where == "line 1"
    path.write_text("\n" + VIDEOX_LINE + "\n")
    assert check_camera_txt(path) == []
    path.write_text("\n1 2 3\n")
    assert check_camera_txt(path)[0].code == "malformed_camera"


def test_camera_files_are_told_by_their_txt_suffix() -> None:
    assert is_camera_file("cams/a.txt") and is_camera_file("cams/A.TXT")
    assert not is_camera_file("control/a.mp4")


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="w2c has shape"):
        CameraTrajectory(intrinsics=np.zeros((2, 4)), w2c=np.zeros((3, 3, 4)))


def test_rows_are_the_file_columns_and_convert_back() -> None:
    camera = parse_camera_lines(CAMERACTRL.splitlines())
    rows = camera.to_array()
    assert rows.shape == (2, 19)
    assert rows[0, 0] == 158692025 and rows[0, 1] == 0.474812461 and rows[0, 18] == -1.002211444
    back = CameraTrajectory.from_array(rows, header=camera.header)
    assert np.array_equal(back.to_array(), rows)


def test_resampling_stretches_rows_linearly_keeping_both_ends_like_videox_fun() -> None:
    rows = np.zeros((3, 19))
    rows[:, 0] = [0, 10, 20]
    rows[:, 1:3] = 0.5
    rows[:, 10] = [0.0, 1.0, 4.0]  # t1 of the w2c matrix
    camera = CameraTrajectory.from_array(rows)
    stretched = camera.resampled(5)
    assert stretched.frame_ids.tolist() == [0, 5, 10, 15, 20]
    assert stretched.w2c[:, 0, 3].tolist() == [0.0, 0.5, 1.0, 2.5, 4.0]
    assert camera.resampled(1).frame_ids.tolist() == [0]
    assert np.array_equal(camera.resampled(3).to_array(), rows)
    with pytest.raises(ValueError):
        camera.resampled(0)
