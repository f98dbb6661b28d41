"""What the web API accepts and answers: the response models and request-body descriptions.

FastAPI turns the pydantic models into the OpenAPI schema (at /openapi.json, browsable at /docs);
the request bodies are read by hand (an image, a raw message, JSON), so they are described here
as OpenAPI fragments that the routes attach to their operations.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    error: str = Field(description="what was wrong, in one line")


class LayerActivation(BaseModel):
    index: int = Field(description="position of the layer in the network")
    type: str = Field(description="layer class, e.g. Linear, ReLU, Conv2D")
    shape: list[int] = Field(description="shape of one example's output: [units] or [channels, height, width]")
    shown: int = Field(description="units, or feature maps, included in `values` (the first ones)")
    values: list[float] = Field(description="the output, flattened in C order")


class UnitWeights(BaseModel):
    unit: int = Field(description="index of the hidden unit (neuron or feature map) in the first weighted layer")
    activation: float = Field(description="its activation for this input (mean over the map for a conv filter)")
    weights: list[list[float]] = Field(description="its incoming weights laid out as an image")


class ImagePrediction(BaseModel):
    label: str = Field(description="the most probable class's name (the model's `classes`)")
    index: int = Field(description="its number: 0 for the model's first class, 1 for the next, ...")
    digit: int | None = Field(None, description="the same number, for a model whose classes are the digits 0-9")
    probabilities: list[float] = Field(description="probability of each class, in the order of the model's classes")
    input: list[list[float]] = Field(
        description="the 28x28 image the network saw, 0 = background, 1 = ink (or the darkest part of an object)")
    layers: list[LayerActivation] | None = Field(None, description="with ?explain=true: each layer's output")
    top_units: list[UnitWeights] | None = Field(
        None, description="with ?explain=true: first-layer weights of the most active hidden units"
    )
    model_version: str = Field(
        description="which loading of the model answered: the `model_version` of /api/models' description of it "
        "then; a page that shows another has a description (classes, cut-offs) of a model since reloaded")


class TokenWeight(BaseModel):
    token: str
    weight: float = Field(description="contribution to the spam score: > 0 pushes towards spam, < 0 towards ham")


class SpamVerdict(BaseModel):
    label: str = Field(description="'spam', 'ham', or 'unsure' (between the model's two calibrated cut-offs)")
    probability: float = Field(description="probability that the message is spam")
    top_tokens: list[TokenWeight] = Field(description="the tokens that pushed the decision most, either way")
    problem: str | None = Field(None, description="how the message was read when it was not a well-formed email")
    read_as: Literal["mail", "sms"] = Field(
        description="how the text was read: 'mail' (an email: a header block, then a body; any body sent as "
        "message/rfc822) or 'sms' (a text message or a note, all of it text: one that starts like 'URGENT: ...' too)")
    header_lines: int = Field(
        description="for mail, how many lines of the text, from its first, were read as its header block, the "
        "blank line that ends it and any blank lines above it included (lines end at \\r\\n, \\r or \\n): the "
        "body starts on the next; a header's tokens (subject:free) were read from its lines there, the others "
        "from the rest. 0 for an SMS, and for a mail read as plain text (`problem`)")
    model_version: str = Field(
        description="which loading of the model answered: the `model_version` of /api/models' description of it "
        "then; a page that shows another has a description (classes, cut-offs) of a model since reloaded")


class ModelInfo(BaseModel):
    path: str
    name: str | None = Field(None, description="an image model's name in /api/images/{name}/predict")
    task: str
    dataset: str | None = Field(None, description="an image model's data set: mnist, fashion, or a folder")
    dataset_title: str | None = Field(None, description="the data set as people write it, e.g. Fashion-MNIST")
    classes: list[str] | None = Field(None, description="an image model's class names, in output order")
    picture: str | None = Field(
        None, description="how an image model prepares a picture: 'digit' (as MNIST; drawings suit it) or "
        "'object' (as Fashion-MNIST; photos of one object on a plain background)")
    format_version: int | None = Field(description="version of the saved model's file format")
    model_version: str = Field(
        description="names the model files as they were loaded (a hash of their names, sizes and times): it "
        "changes when a model changed on disk is loaded again, and each answer of the model carries it")
    num_parameters: int
    layers: list[str] = Field(description="layer types, input side first")
    metrics: dict[str, Any] = Field(description="metrics recorded when the model was trained")
    metadata: dict[str, Any] = Field(description="other scalar facts saved with the model (preset, data, ...)")
    cutoffs: dict[str, float] | None = Field(
        None, description="a spam model's cut-offs: 'spam' (P(spam) at or above it is spam) and 'ham' (below "
        "it is ham; between the two, unsure)")


class ModelsResponse(BaseModel):
    digits: ModelInfo | None = Field(description="the image model /api/digits/predict uses")
    images: list[ModelInfo] = Field(description="every image model, each served at /api/images/{name}/predict")
    spam: ModelInfo | None
    hints: dict[str, str] = Field(description="for each model that is not loaded: how to get one")


class Health(BaseModel):
    status: str
    digits: bool
    spam: bool
    images: list[str]  # the names of the image models served (`/api/images/{name}/predict`)


# -- request bodies, as OpenAPI describes them ----------------------------------------------------

IMAGE_BODY = {
    "description": "A PNG or JPEG image (raw body, or multipart field `file`), preprocessed as "
    "`chainrule images predict` does for the model; or a 28x28 array of numbers in [0, 1] "
    "(0 = background, 1 = ink), used as is: as JSON, or as a body sent with no Content-Type or with the form's "
    "(what curl -d sends unless told otherwise) that is a JSON array or object.",
    "required": True,
    "content": {
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                       "required": ["file"]}
        },
        "application/json": {
            "schema": {
                "oneOf": [
                    {"$ref": "#/components/schemas/Pixels"},
                    {"type": "object", "properties": {"pixels": {"$ref": "#/components/schemas/Pixels"}},
                     "required": ["pixels"]},
                ]
            }
        },
    },
}
PIXELS_SCHEMA = {
    "type": "array", "minItems": 28, "maxItems": 28,
    "items": {"type": "array", "minItems": 28, "maxItems": 28, "items": {"type": "number", "minimum": 0, "maximum": 1}},
}
SPAM_BODY = {
    "description": "The raw message: an email with its headers (RFC 822, any charset) or an SMS, as the body "
    "(text/plain, message/rfc822: an email whatever its first lines are; a text in the charset the Content-Type "
    "declares, such as utf-16), as "
    "multipart field `file`, as JSON {\"message\": \"...\"}, or as the field `message` of a urlencoded form "
    "(curl --data-urlencode message@FILE, an HTML form). A body sent with no Content-Type, or with the form's "
    "(what curl sends unless told otherwise), that is no JSON object or form with a field message is the raw message.",
    "required": True,
    "content": {
        "text/plain": {"schema": {"type": "string"}},
        "message/rfc822": {"schema": {"type": "string"}},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                       "required": ["file"]}
        },
        "application/json": {
            "schema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}
        },
        "application/x-www-form-urlencoded": {
            "schema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}
        },
    },
}
ERROR_RESPONSES = {
    400: {"model": ErrorResponse, "content": {"text/plain": {"schema": {"type": "string"}}},
          "description": "in plain text: a Content-Length that is not a number (uvicorn's own answer); served on a "
          "loopback address, a Host header naming another machine"},
    408: {"model": ErrorResponse, "description": "no part of the body arrived for the server's --timeout seconds"},
    413: {"model": ErrorResponse, "description": "request body over the size limit"},
    422: {"model": ErrorResponse, "description": "not an image / not text / malformed"},
    500: {"model": ErrorResponse, "description": "the loaded model cannot answer: its outputs overflowed (weights "
          "too large)"},
    503: {"model": ErrorResponse, "description": "no model of this kind is loaded"},
}
IMAGE_ERROR_RESPONSES = {404: {"model": ErrorResponse, "description": "no image model of that name"},
                         **ERROR_RESPONSES}
