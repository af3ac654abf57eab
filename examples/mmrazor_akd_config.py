# An MMRazor config: SingleTeacherDistill with AvatarLoss (avatarkd.integrations.mmrazor) around
# MMRazor's own ChannelWiseDivergence on the backbone features, and around avatarkd's `kd` on the logits.
#   pip install 'avatarkd[mmrazor]'
# Replace the two AvatarKDTinySegmenter models by your mmseg configs and set teacher_ckpt; the rest is
# the usual MMRazor ConfigurableDistiller (recorders, connectors, loss_forward_mappings): only the
# losses' `type` changed from ChannelWiseDivergence to AvatarLoss, with the old loss as `base`.
custom_imports = dict(imports=["avatarkd.integrations.mmrazor", "mmrazor_tiny_models"], allow_failed_imports=False)

teacher_ckpt = None  # the trained teacher's checkpoint

model = dict(
    _scope_="mmrazor",
    type="SingleTeacherDistill",
    architecture=dict(type="AvatarKDTinySegmenter", num_classes=11, width=8),
    teacher=dict(type="AvatarKDTinySegmenter", num_classes=11, width=32),
    teacher_ckpt=teacher_ckpt,
    distiller=dict(
        type="ConfigurableDistiller",
        student_recorders=dict(
            feat=dict(type="ModuleOutputs", source="backbone"), logits=dict(type="ModuleOutputs", source="head")
        ),
        teacher_recorders=dict(
            feat=dict(type="ModuleOutputs", source="backbone"), logits=dict(type="ModuleOutputs", source="head")
        ),
        connectors=dict(
            feat_s=dict(type="ConvModuleConnector", in_channel=8, out_channel=32, norm_cfg=None, act_cfg=None)
        ),
        distill_losses=dict(
            loss_cwd=dict(
                type="AvatarLoss",
                base=dict(type="ChannelWiseDivergence", tau=1, loss_weight=3),
                num_avatars=4,
                p=0.1,
                uncertainty="relative",
            ),
            loss_kd=dict(type="AvatarLoss", base="kd", tau=2.0, num_avatars=4, p=0.1),
        ),
        loss_forward_mappings=dict(
            loss_cwd=dict(
                preds_S=dict(from_student=True, recorder="feat", connector="feat_s"),
                preds_T=dict(from_student=False, recorder="feat"),
            ),
            loss_kd=dict(
                preds_S=dict(from_student=True, recorder="logits"), preds_T=dict(from_student=False, recorder="logits")
            ),
        ),
    ),
)

optim_wrapper = dict(optimizer=dict(type="AdamW", lr=1e-3, weight_decay=1e-4))
