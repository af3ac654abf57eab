"""The one pydantic base every config section derives from."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys are errors (a misspelt key must not be silently ignored); ``model_*`` names are ours."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
