"""The Open Inference Protocol (V2, KServe's REST data plane): its wire types and its codec (`V2Codec`):
V2 tensors to the model's input, a batch's Answers back to tensors. app/api/routes/v2.py translates HTTP
and hands the codec to the data plane (app.serving.data_plane), which validates, scores and traces the
rows as /predict's.

Inputs are one tensor per feature (FP64, FP32 or INT64 for a numeric feature, BYTES for a categorical
one; shape [n] or [n, 1]), or, when every feature is numeric, one [n, features] tensor named
MATRIX_INPUT with the columns in model.json's order. `data` is flat (row-major) or nested JSON, or
binary (Triton's binary tensor data extension, what tritonclient sends by default: the JSON's length
in the Inference-Header-Content-Length header, each tensor's bytes after it). Answers are always JSON.

A feature that had gaps in training takes a missing value as /predict takes null: JSON null, NaN (in
binary data, or JSON's non-standard NaN literal) or, for a categorical feature, "" (MISSING_CATEGORY).
Errors never echo the values sent: 400 for a request that does not fit the protocol or the model's
inputs (names, datatypes, shapes, data lengths: they name the tensor), 422 for values the model refuses
(non-finite or missing numbers, unknown categories, an empty or oversized batch): those are the
validator's errors, the words of /predict's and /predict/csv's, each naming its row and feature
(app.serving.validation.sentence).
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError

from app.core.artifacts import MISSING_CATEGORY, Feature, ModelMetadata
from app.serving.data_plane import Inferred
from app.serving.predictor import Answers, Predictor
from app.serving.validation import ModelInput, batch_size_error

# What `{name}` in /v2/models/{name} must be when model.json names no registered model.
DEFAULT_MODEL_NAME = "predictor"
# The one 2-D tensor that may carry every feature of an all-numeric model.
MATRIX_INPUT = "input-0"
NUMERIC_DATATYPES = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8"}
STRING_DATATYPE = "BYTES"
# The binary tensor data extension: the JSON part's length; each binary input's size is a parameter.
JSON_LENGTH_HEADER = "inference-header-content-length"
BINARY_SIZE_PARAMETER = "binary_data_size"
LABEL, PROBABILITIES, VALUE = "label", "probabilities", "value"
# Each row's id, to send back with its ground truth (POST /feedback).
PREDICTION_ID = "prediction_id"
# How many rows or names an error message lists before it says how many more.
_LISTED = 5
# Names a client sent are quoted in errors (as /predict's errors name unknown fields), up to this long.
_QUOTED = 64
_INT64_LIMIT = 2.0**63

BAD_REQUEST = 400
NOT_FOUND = 404
UNPROCESSABLE = 422


class V2Error(ValueError):
    """A request refused with the protocol's `{"error": message}`.

    `fields` names the features it is about, for the validation metric (None: the request as a whole);
    empty for errors that are not a validation failure (an unknown model)."""

    def __init__(self, message: str, status: int = BAD_REQUEST, fields: tuple[str | None, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.fields = fields


def _invalid(message: str) -> V2Error:
    return V2Error(message, BAD_REQUEST, (None,))


# The wire types, as the protocol's REST spec names them. Parameters are free-form objects there.
Parameters = dict[str, Any]


class _Request(BaseModel):
    # A misspelt field ("datatyp") is refused rather than ignored.
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Request):
    name: str
    shape: list[NonNegativeInt]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None  # None when the tensor is sent as binary data


class RequestOutput(_Request):
    name: str
    parameters: Parameters | None = None  # binary_data is not honoured: answers are JSON


class InferenceRequest(_Request):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None  # None: every output


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any]  # row-major


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]  # -1: any length
    parameters: Parameters | None = None


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: Parameters | None = None


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLiveResponse(BaseModel):
    live: Literal[True]


class ServerReadyResponse(BaseModel):
    ready: Literal[True]


class ModelReadyResponse(BaseModel):
    name: str
    ready: Literal[True]


class ErrorResponse(BaseModel):
    error: str = Field(description="Why, in one sentence")


def model_name(metadata: ModelMetadata) -> str:
    """The name clients address the model by: its registered model name."""
    return metadata.registered_model or DEFAULT_MODEL_NAME


def output_names(predictor: Predictor) -> tuple[str, ...]:
    if predictor.metadata.task == "regression":
        return (VALUE, PREDICTION_ID)
    # A classifier without predict_proba answers labels alone.
    return (LABEL, PREDICTION_ID) if predictor.model.labels_only else (LABEL, PROBABILITIES, PREDICTION_ID)


def all_numeric(predictor: Predictor) -> bool:
    return predictor.schema.dtype is np.float64


def model_metadata(predictor: Predictor) -> ModelMetadataResponse:
    """The model's tensors: one input per feature, with its range or categories, and the outputs."""
    metadata = predictor.metadata
    inputs = [_feature_tensor(f) for f in metadata.features]
    outputs = [_output_tensor(name, metadata.classes) for name in output_names(predictor)]
    parameters: Parameters = {"task": metadata.task, "max_batch_rows": predictor.schema.max_rows}
    if all_numeric(predictor):
        parameters["matrix_input"] = MATRIX_INPUT
        parameters["matrix_input_shape"] = [-1, len(metadata.features)]
    return ModelMetadataResponse(
        name=model_name(metadata),
        versions=[metadata.version],
        platform="onnxruntime_onnx" if predictor.model.source == "onnx" else "scikit-learn",
        inputs=inputs,
        outputs=outputs,
        parameters=parameters,
    )


def _output_tensor(name: str, classes: list[str]) -> MetadataTensor:
    if name == PROBABILITIES:
        # The probability columns' order, as /predict's answers name them.
        shape, parameters = [-1, len(classes)], {"classes": list(classes)}
        return MetadataTensor(name=name, datatype="FP64", shape=shape, parameters=parameters)
    text = name in (LABEL, PREDICTION_ID)
    return MetadataTensor(name=name, datatype=STRING_DATATYPE if text else "FP64", shape=[-1])


def _feature_tensor(feature: Feature) -> MetadataTensor:
    parameters: Parameters = {"missing_allowed": feature.missing_fraction > 0}
    if feature.type == "numeric":
        parameters |= {"min": feature.min, "max": feature.max}
        return MetadataTensor(name=feature.name, datatype="FP64", shape=[-1], parameters=parameters)
    parameters["categories"] = list(feature.categories or [])
    return MetadataTensor(name=feature.name, datatype=STRING_DATATYPE, shape=[-1], parameters=parameters)


class V2Codec:
    """The infer request's codec: tensors in (JSON, or binary after the JSON part), tensors out."""

    __slots__ = ("body", "json_length", "outputs", "request")

    def __init__(self, body: bytes, json_length: str | None) -> None:
        self.body = body
        self.json_length = json_length  # the Inference-Header-Content-Length header
        self.request: InferenceRequest | None = None  # set by decode
        self.outputs: tuple[str, ...] = ()  # the outputs to answer, in the order asked

    def decode(self, predictor: Predictor) -> ModelInput:
        """The rows /predict would have read from the same values; raises V2Error."""
        self.request, binary = read_request(self.body, self.json_length)
        self.outputs = requested_outputs(self.request, output_names(predictor))
        return to_model_input(self.request.inputs, binary, predictor)

    def encode(self, predictor: Predictor, model_input: ModelInput, inferred: Inferred) -> bytes:
        assert self.request is not None  # decoded first
        response = to_response(inferred.answers, inferred.ids, self.request.id, self.outputs, predictor)
        return response.model_dump_json(exclude_none=True).encode()


def read_request(body: bytes, json_length: str | None) -> tuple[InferenceRequest, list[bytes | None]]:
    """The JSON part and, per input, its binary data (None for an input sent as JSON)."""
    json_part, binary = body, b""
    if json_length is not None:
        if not json_length.isdigit() or int(json_length) > len(body):
            raise _invalid(
                f"Inference-Header-Content-Length must be the JSON part's length, 0 to {len(body)}"
            )
        json_part, binary = body[: int(json_length)], body[int(json_length) :]
    try:
        request = InferenceRequest.model_validate_json(json_part)
    except ValidationError as exc:
        raise _invalid(f"invalid inference request: {_first_error(exc)}") from None
    raw: list[bytes | None] = []
    offset = 0
    for tensor in request.inputs:
        size = (tensor.parameters or {}).get(BINARY_SIZE_PARAMETER)
        if size is None:
            if tensor.data is None:
                raise _invalid(f"input {_quote(tensor.name)} has no data")
            raw.append(None)
            continue
        if type(size) is not int or size < 0:
            raise _invalid(f"input {_quote(tensor.name)}: {BINARY_SIZE_PARAMETER} must be a byte count")
        if tensor.data is not None:
            raise _invalid(f"input {_quote(tensor.name)} has both data and {BINARY_SIZE_PARAMETER}")
        raw.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise _invalid(
            f"the binary part is {len(binary)} bytes, but the inputs' {BINARY_SIZE_PARAMETER} "
            f"add up to {offset}"
        )
    return request, raw


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}" if where else f"{first['msg']}{more}"


def requested_outputs(request: InferenceRequest, available: tuple[str, ...]) -> tuple[str, ...]:
    if not request.outputs:
        return available
    names = tuple(dict.fromkeys(o.name for o in request.outputs))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise _invalid(f"unknown output {_names(unknown)}: this model's outputs are {', '.join(available)}")
    return names


def to_model_input(
    inputs: list[RequestInput], binary: list[bytes | None], predictor: Predictor
) -> ModelInput:
    """The feature matrix, a gap where a value is null, NaN or (categorical) "": not yet validated."""
    features = predictor.metadata.features
    if not inputs:
        raise _invalid("the request has no inputs")
    names = [t.name for t in inputs]
    repeated = sorted(n for n, times in Counter(names).items() if times > 1)
    if repeated:
        raise _invalid(f"input {_names(repeated)} given more than once")
    known = {f.name for f in features}
    if MATRIX_INPUT in names and MATRIX_INPUT not in known:
        return _from_matrix_input(inputs, binary, predictor)
    by_name = dict(zip(names, zip(inputs, binary, strict=True), strict=True))
    unknown = [n for n in names if n not in known]
    if unknown:
        matrix_form = f", or one {MATRIX_INPUT} tensor holding them all" if all_numeric(predictor) else ""
        raise _invalid(
            f"unknown input {_names(unknown)}: this model's inputs are its features "
            f"{', '.join(f.name for f in features)}{matrix_form}"
        )
    missing = [f.name for f in features if f.name not in by_name]
    if missing:
        raise V2Error(
            f"missing input {_names(missing)}: send one tensor per feature", BAD_REQUEST, tuple(missing)
        )
    rows = _batch_rows([by_name[f.name][0] for f in features], predictor.schema.max_rows)
    matrix: np.ndarray = np.empty((rows, len(features)), dtype=predictor.schema.dtype)
    gaps = np.empty((rows, len(features)), dtype=bool)
    for j, feature in enumerate(features):
        tensor, raw = by_name[feature.name]
        if feature.type == "numeric":
            column = _numbers(tensor, raw, rows)
            gaps[:, j] = np.isnan(column)
        else:
            column = _strings(tensor, raw, rows)
            gaps[:, j] = column == MISSING_CATEGORY
        matrix[:, j] = column
    return ModelInput(matrix, gaps if gaps.any() else None)


def _from_matrix_input(
    inputs: list[RequestInput], binary: list[bytes | None], predictor: Predictor
) -> ModelInput:
    features = predictor.metadata.features
    if not all_numeric(predictor):
        raise _invalid(
            f"{MATRIX_INPUT} takes every feature at once only when all are numeric: "
            f"send one tensor per feature ({', '.join(f.name for f in features)})"
        )
    if len(inputs) > 1:
        raise _invalid(f"{MATRIX_INPUT} holds every feature: send it alone, or one tensor per feature")
    tensor, raw = inputs[0], binary[0]
    if len(tensor.shape) != 2 or tensor.shape[1] != len(features):
        raise _invalid(
            f"{MATRIX_INPUT} must have the shape [rows, {len(features)}], "
            f"its columns {', '.join(f.name for f in features)}; got {tensor.shape}"
        )
    rows = tensor.shape[0]
    _check_rows(rows, predictor.schema.max_rows)
    matrix = _numbers(tensor, raw, rows * len(features)).reshape(rows, len(features))
    missing = np.isnan(matrix)
    return ModelInput(matrix, missing if missing.any() else None)


def _batch_rows(tensors: list[RequestInput], max_rows: int) -> int:
    """The batch size every tensor agrees on: shape [rows] or [rows, 1]."""
    for tensor in tensors:
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise V2Error(
                f"input {_quote(tensor.name)} must have the shape [rows] or [rows, 1]; got {tensor.shape}",
                BAD_REQUEST,
                (tensor.name,),
            )
    sizes = {t.name: t.shape[0] for t in tensors}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{_quote(n)} {s}" for n, s in list(sizes.items())[:_LISTED])
        raise _invalid(f"the inputs must have the same number of rows; they have {listed}")
    rows = tensors[0].shape[0]
    _check_rows(rows, max_rows)
    return rows


def _check_rows(rows: int, max_rows: int) -> None:
    """Before any tensor is read: a batch past the limit is refused without allocating its matrix."""
    if not 1 <= rows <= max_rows:
        raise batch_size_error(rows, max_rows)


def _numbers(tensor: RequestInput, raw: bytes | None, count: int) -> np.ndarray:
    """A numeric tensor's `count` values as float64, flat; NaN where JSON had null."""
    if tensor.datatype not in NUMERIC_DATATYPES:
        raise V2Error(
            f"input {_quote(tensor.name)} is numeric: its datatype must be "
            f"{', '.join(NUMERIC_DATATYPES)}, not {_quote(tensor.datatype)}",
            BAD_REQUEST,
            (tensor.name,),
        )
    if raw is not None:
        dtype = np.dtype(NUMERIC_DATATYPES[tensor.datatype])
        if len(raw) != count * dtype.itemsize:
            raise _length_mismatch(tensor, f"{len(raw)} bytes", f"{count * dtype.itemsize} bytes")
        return np.frombuffer(raw, dtype=dtype).astype(np.float64)
    values, kinds = _leaves(tensor, count)
    allowed = {int, type(None)} if tensor.datatype == "INT64" else {int, float, type(None)}
    if not kinds <= allowed:
        what = "integers" if tensor.datatype == "INT64" else "numbers"
        raise V2Error(
            f"input {_quote(tensor.name)} is {tensor.datatype}: its data must be {what} (or null)",
            BAD_REQUEST,
            (tensor.name,),
        )
    try:
        numbers = values.astype(np.float64)
    except OverflowError:  # an integer literal past float64's range
        raise V2Error(
            f"input {_quote(tensor.name)} holds numbers outside {tensor.datatype}'s range",
            UNPROCESSABLE,
            (tensor.name,),
        ) from None
    if tensor.datatype == "FP32":
        # What the client's float32 held: a value past float32's range becomes inf, refused below.
        with np.errstate(over="ignore"):
            numbers = numbers.astype(np.float32).astype(np.float64)
    elif tensor.datatype == "INT64" and (np.abs(numbers[~np.isnan(numbers)]) >= _INT64_LIMIT).any():
        raise V2Error(
            f"input {_quote(tensor.name)} holds integers outside INT64's range", UNPROCESSABLE, (tensor.name,)
        )
    return numbers


def _strings(tensor: RequestInput, raw: bytes | None, count: int) -> np.ndarray:
    """A BYTES tensor's `count` values as an object array of str, MISSING_CATEGORY for a gap."""
    if tensor.datatype != STRING_DATATYPE:
        raise V2Error(
            f"input {_quote(tensor.name)} is categorical: its datatype must be BYTES, "
            f"not {_quote(tensor.datatype)}",
            BAD_REQUEST,
            (tensor.name,),
        )
    if raw is not None:
        return _binary_strings(tensor, raw, count)
    values, kinds = _leaves(tensor, count)
    if not kinds <= {str, type(None)}:
        raise V2Error(
            f"input {_quote(tensor.name)} is BYTES: its data must be strings (or null)",
            BAD_REQUEST,
            (tensor.name,),
        )
    values[values == None] = MISSING_CATEGORY  # noqa: E711 (numpy compares each element)
    return values


def _binary_strings(tensor: RequestInput, raw: bytes, count: int) -> np.ndarray:
    """BYTES in binary: each element's length (4 bytes, little-endian), then its bytes."""
    values = np.empty(count, dtype=object)
    offset = 0
    try:
        for i in range(count):
            (length,) = struct.unpack_from("<I", raw, offset)
            end = offset + 4 + length
            if end > len(raw):
                raise ValueError
            values[i] = raw[offset + 4 : end].decode("utf-8")
            offset = end
    except (struct.error, ValueError):  # too short, or not UTF-8
        raise V2Error(
            f"input {_quote(tensor.name)}: its binary data does not hold {count} UTF-8 strings",
            BAD_REQUEST,
            (tensor.name,),
        ) from None
    if offset != len(raw):
        raise _length_mismatch(tensor, f"{len(raw)} bytes", f"{offset} bytes for {count} strings")
    return values


def _leaves(tensor: RequestInput, count: int) -> tuple[np.ndarray, set[type]]:
    """JSON data, flat or nested row-major, as a flat object array of its `count` elements and their types."""
    try:
        values = np.array(tensor.data or [], dtype=object).reshape(-1)
    except ValueError:  # a ragged nesting numpy cannot even hold as lists
        raise _ragged(tensor) from None
    kinds = set(map(type, values))
    if list in kinds:  # rows of different lengths, held as lists
        raise _ragged(tensor)
    if values.size != count:
        raise _length_mismatch(tensor, _elements(values.size), f"{count} (its shape is {tensor.shape})")
    return values, kinds


def _ragged(tensor: RequestInput) -> V2Error:
    return V2Error(
        f"input {_quote(tensor.name)}: data must be flat, or nested with every row the same length",
        BAD_REQUEST,
        (tensor.name,),
    )


def _elements(count: int) -> str:
    return f"{count} element{'' if count == 1 else 's'}"


def _length_mismatch(tensor: RequestInput, found: str, expected: str) -> V2Error:
    return V2Error(
        f"input {_quote(tensor.name)} has {found} of data; expected {expected}", BAD_REQUEST, (tensor.name,)
    )


def to_response(
    answers: Answers, ids: list[str], request_id: str | None, asked: tuple[str, ...], predictor: Predictor
) -> InferenceResponse:
    """The answers as the requested output tensors, row-major."""
    rows = len(answers)
    outputs = []
    for name in asked:
        if name == PREDICTION_ID:
            outputs.append(ResponseOutput(name=name, shape=[rows], datatype=STRING_DATATYPE, data=ids))
        if name == LABEL and answers.labels is not None:
            outputs.append(
                ResponseOutput(name=name, shape=[rows], datatype="BYTES", data=answers.labels.tolist())
            )
        elif name == PROBABILITIES and answers.probabilities is not None:
            outputs.append(
                ResponseOutput(
                    name=name,
                    shape=[rows, len(answers.classes)],
                    datatype="FP64",
                    parameters={"classes": list(answers.classes)},
                    data=answers.probabilities.ravel().tolist(),
                )
            )
        elif name == VALUE and answers.values is not None:
            outputs.append(
                ResponseOutput(name=name, shape=[rows], datatype="FP64", data=answers.values.tolist())
            )
    return InferenceResponse(
        model_name=model_name(predictor.metadata),
        model_version=predictor.version,
        id=request_id,
        outputs=outputs,
    )


def _quote(name: str) -> str:
    return repr(name if len(name) <= _QUOTED else name[:_QUOTED] + "...")


def _names(names: list[str]) -> str:
    listed = ", ".join(_quote(n) for n in names[:_LISTED])
    return listed + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
