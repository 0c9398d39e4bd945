"""CogVideoX-Fun validation inputs: the validation flags checked against the train mode (VideoX-Fun's
``--validation_paths`` is the start images of inpaint and the control videos of control) and the
samples they name. `CogVideoXFun` checks them when parsing and builds its `ValidationRunner` from them.
"""

from __future__ import annotations

from typing import Any

from vidctrl.families.samples import ValidationSample


def validation_inputs(config: Any, mode: str) -> tuple[list[str], list[str], list[str]]:
    """Prompts, start images (inpaint) and control videos (control) of the validation flags, checked
    against the train mode: ``--validation_paths`` is VideoX-Fun's spelling of whichever the mode takes."""
    v, paths = config.validation, config.family.validation_paths or []
    if paths and (v.validation_images or v.validation_control_videos):
        raise ValueError("--validation_paths and --validation_images/--validation_control_videos name the same "
                         "inputs: pass one of them")
    if v.validation_images and mode != "inpaint":
        raise ValueError(f"--validation_images: train mode {mode} takes no start image (inpaint does)")
    if v.validation_control_videos and mode != "control":
        raise ValueError(f"--validation_control_videos: train mode {mode} takes no control video (control does)")
    if paths and mode == "normal":
        raise ValueError("--validation_paths: train mode normal takes neither start images nor control videos")
    prompts = list(v.validation_prompts or [])
    if v.validation_prompt_separator and len(prompts) == 1:
        prompts = prompts[0].split(v.validation_prompt_separator)
    images = list(v.validation_images or (paths if mode == "inpaint" else []))
    controls = list(v.validation_control_videos or (paths if mode == "control" else []))
    if not (v.validation_steps or v.validation_epochs):
        return prompts, images, controls
    if not prompts:
        raise ValueError("validation (--validation_steps / --validation_epochs) needs --validation_prompts")
    if mode == "control" and len(controls) != len(prompts):
        raise ValueError(f"control validation needs one control video per prompt (--validation_control_videos or "
                         f"--validation_paths); got {len(prompts)} prompts, {len(controls)} control videos")
    if images and len(images) != len(prompts):
        raise ValueError(f"one start image per prompt (--validation_images or --validation_paths); got "
                         f"{len(prompts)} prompts, {len(images)} images")
    return prompts, images, controls


def validation_samples(config: Any, mode: str) -> tuple[list[ValidationSample], int, int, int]:
    """The samples of the validation flags for train mode `mode`, and the (height, width, frames) they
    are generated at. Without a control video the sample's control is what the model is given (the
    start image as frame 0, then black frames), for the contact sheet."""
    from vidctrl.models.cogvideox.inpaint import first_frame_video
    from vidctrl.train.validation import load_control, load_reference, validation_size

    prompts, images, controls = validation_inputs(config, mode)
    height, width, frames = validation_size(config)
    samples = []
    for i, prompt in enumerate(prompts):
        reference = load_reference(images[i], height, width) if images and mode == "inpaint" else None
        if mode == "control":
            control, fps = load_control(controls[i], height, width, frames)
        else:
            control, fps = first_frame_video(reference, frames, height, width), 8.0
        samples.append(ValidationSample(prompt=prompt, reference=reference, control=control,
                                        name=f"sample-{i}", fps=fps))
    return samples, height, width, frames
