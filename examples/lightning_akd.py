"""AKD inside your own Lightning loop: the built-in FCN-ResNet18 teacher (avatarkd/configs/seg_teacher.yaml)
distilled into an LR-ASPP/MobileNetV3-small student on the bundled data, CWD on the last backbone
stage and KD on the logits, as in avatarkd/configs/seg_akd.yaml.

    pip install 'avatarkd[lightning]'
    avatarkd train avatarkd/configs/seg_teacher.yaml              # the teacher, once
    python examples/lightning_akd.py --teacher-weights runs/seg_teacher/student.pt

The checkpoint (``last.ckpt``) holds the student and the connectors/loss state, not the teacher;
``AvatarKDModule.load_from_checkpoint(path, student=..., teacher=...)`` restores it without an
example batch. ``student.pt`` is the student's own ``state_dict``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from avatarkd.config import DataConfig
from avatarkd.data import open_dataset
from avatarkd.integrations.lightning import AvatarKDModule, pl
from avatarkd.models import build_segmenter, load_weights

POINTS = [
    # the "out" items of LR-ASPP's extractor (576 ch, stride 16) and FCN-R18's backbone (512 ch, stride 8)
    {"name": "layer4", "student": "backbone.body", "teacher": "backbone", "key": "out", "loss": "cwd"},
    {"name": "logits", "student": "", "teacher": "", "key": "out", "loss": "kd", "loss_kwargs": {"tau": 2.0}},
]


def build_models(num_classes: int, teacher_weights: str | Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(student, teacher): built-in models; the teacher with its trained weights."""
    teacher = build_segmenter("fcn", "resnet18", num_classes, 8)
    load_weights(teacher, teacher_weights, "teacher")
    return build_segmenter("lraspp", "mobilenet_v3_small", num_classes), teacher


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher-weights", required=True)
    parser.add_argument("--output-dir", default="runs/lightning_akd")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, help="use only the first N training images (smoke runs)")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)

    train = open_dataset("segmentation", split="train", config=DataConfig(hflip=0.5), seed=0)
    num_classes = train.num_classes
    if args.limit:
        train = Subset(train, range(min(args.limit, len(train))))
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True)

    student, teacher = build_models(num_classes, args.teacher_weights)
    image, _ = train[0]
    module = AvatarKDModule(student, teacher, POINTS, input_shape=tuple(image.shape), akd={"num_avatars": 4}, lr=1e-2)
    trainer = pl.Trainer(
        max_steps=args.steps,
        default_root_dir=out,
        accelerator="auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    trainer.save_checkpoint(out / "last.ckpt")
    torch.save(module.student_state_dict(), out / "student.pt")
    print(f"wrote {out / 'last.ckpt'} (student + distillation parts) and {out / 'student.pt'} (student)")
    return out / "last.ckpt"


if __name__ == "__main__":
    main()
