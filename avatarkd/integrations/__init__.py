"""Bridges to training frameworks: ``lightning`` (a LightningModule around ``Distiller``) and ``mmrazor``
(``AvatarLoss`` in MMRazor's registry). Each imports its framework, an optional extra, only when
imported itself: ``import avatarkd`` never needs them."""
