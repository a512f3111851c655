"""sparsetx_ctypes: a ctypes binding of include/sparsetx.h, standard library only.

It is both a test helper and the example for Python users. Every function of the header is
declared here with its argument and return types; a thin ``Model`` class wraps the common
workflow. Typical use::

    import sparsetx_ctypes as stx

    lib = stx.load("build/libsparsetx.so")
    cfg = stx.config(lib, n_layer=2, n_embd=32, n_head=2, n_ctx=64,
                     pattern="local:16+strided:16", block_size=16)
    with stx.Model(lib, cfg) as model:
        model.set_optimizer(lr=3e-3)
        data = b"hello world " * 11
        for step in range(10):
            model.zero_grad()
            loss = model.forward(data[:128], B=2, T=64)   # mean nats per byte
            model.backward()
            model.step()
        shapes = model.params()                # {"tok_emb": (256, 32), ...}
        w = model.read_param("w_out")          # array.array('d'), row-major

Conventions
 - Every fallible C call returns an stx_status; a nonzero status raises ``SparsetxError``
   carrying the status, its fixed text and the thread's ``stx_last_error()`` message.
 - Structs are passed with ``ctypes.sizeof`` and ``ABI_VERSION`` through the ``*_v``
   functions, so a header/library mismatch is refused (STX_ERR_VERSION) instead of misread.
 - Tensors cross the boundary as float64 (STX_DTYPE_F64) in ``array.array('d')``, flat and
   row-major; the shapes come from ``Model.params()``.
"""

import array
import ctypes
import ctypes.util
import os

# ------------------------------------------------------------------ constants (sparsetx.h)

VERSION_MAJOR = 0
VERSION_MINOR = 1
VERSION_PATCH = 0
VERSION_NUMBER = VERSION_MAJOR * 10000 + VERSION_MINOR * 100 + VERSION_PATCH
VERSION_STRING = "0.1.0"
ABI_VERSION = 2

FEATURE_CUDA = 1
FEATURE_OPENMP = 2
FEATURE_NCCL = 4

OK = 0
STEP_SKIPPED = 1  # stx_optimizer_step: non-finite gradients, nothing changed
ERR_INVALID_ARGUMENT = -1
ERR_OUT_OF_MEMORY = -2
ERR_IO = -3
ERR_FORMAT = -4
ERR_VERSION = -5
ERR_UNSUPPORTED = -6
ERR_DEVICE = -7
ERR_STATE = -8
ERR_INTERNAL = -9
ERR_COMM = -10
STATUSES = (OK, STEP_SKIPPED, ERR_INVALID_ARGUMENT, ERR_OUT_OF_MEMORY, ERR_IO, ERR_FORMAT, ERR_VERSION,
            ERR_UNSUPPORTED, ERR_DEVICE, ERR_STATE, ERR_INTERNAL, ERR_COMM)

LOG_DEBUG = 0
LOG_INFO = 1
LOG_WARN = 2

BACKEND_CPU = 0
BACKEND_CUDA = 1
BACKEND_AUTO = 2

PRECISION_FP32 = 0
PRECISION_FP64 = 1
PRECISION_BF16 = 2

DTYPE_F32 = 0
DTYPE_F64 = 1

MAX_POS_AXES = 4
PATTERN_MAX = 256
VOCAB = 256
MAX_DIMS = 4

DIST_ID_BYTES = 128
DIST_CPU = -1
REDUCE_SUM = 0
REDUCE_MIN = 1
REDUCE_MAX = 2
DIST_GRADS_FP32 = 0
DIST_GRADS_BF16 = 1

# ------------------------------------------------------------------------------ structs


class Config(ctypes.Structure):
    """struct stx_config, field by field."""

    _fields_ = [
        ("n_layer", ctypes.c_int32),
        ("n_embd", ctypes.c_int32),
        ("n_head", ctypes.c_int32),
        ("n_ctx", ctypes.c_int32),
        ("ff_mult", ctypes.c_int32),
        ("block_size", ctypes.c_int32),
        ("n_pos_axes", ctypes.c_int32),
        ("pos_shape", ctypes.c_int32 * MAX_POS_AXES),
        ("backend", ctypes.c_int32),
        ("device", ctypes.c_int32),
        ("precision", ctypes.c_int32),
        ("n_threads", ctypes.c_int32),
        ("recompute", ctypes.c_int32),
        ("qk_ratio", ctypes.c_float),
        ("dropout", ctypes.c_float),
        ("seed", ctypes.c_uint64),
        ("pattern", ctypes.c_char * PATTERN_MAX),
    ]


class OptimConfig(ctypes.Structure):
    """struct stx_optim_config, field by field."""

    _fields_ = [
        ("lr", ctypes.c_double),
        ("min_lr", ctypes.c_double),
        ("beta1", ctypes.c_double),
        ("beta2", ctypes.c_double),
        ("eps", ctypes.c_double),
        ("weight_decay", ctypes.c_double),
        ("grad_clip", ctypes.c_double),
        ("warmup_steps", ctypes.c_int64),
        ("total_steps", ctypes.c_int64),
    ]


class SampleConfig(ctypes.Structure):
    """struct stx_sample_config, field by field."""

    _fields_ = [
        ("temperature", ctypes.c_double),
        ("top_k", ctypes.c_int32),
        ("stop_byte", ctypes.c_int32),
        ("top_p", ctypes.c_double),
        ("seed", ctypes.c_uint64),
        ("naive", ctypes.c_int32),
    ]


class DataInfo(ctypes.Structure):
    """struct stx_data_info, field by field."""

    _fields_ = [
        ("n_bytes", ctypes.c_int64),
        ("record_size", ctypes.c_int64),
        ("n_records", ctypes.c_int64),
        ("n_axes", ctypes.c_int32),
        ("shape", ctypes.c_int32 * MAX_POS_AXES),
        ("sample_rate", ctypes.c_int32),
    ]


class DistId(ctypes.Structure):
    """struct stx_dist_id: rank 0's communicator id, the same bytes on every rank."""

    _fields_ = [("bytes", ctypes.c_uint8 * DIST_ID_BYTES)]


class DistOptions(ctypes.Structure):
    """struct stx_dist_options, field by field."""

    _fields_ = [("grads", ctypes.c_int32), ("bucket_layers", ctypes.c_int32)]


# Opaque handles: only pointers to them cross the boundary.
class _Model(ctypes.Structure):
    pass


class _Dataset(ctypes.Structure):
    pass


class _Layout(ctypes.Structure):
    pass


class _Decoder(ctypes.Structure):
    pass


class _Dist(ctypes.Structure):
    pass


ModelPtr = ctypes.POINTER(_Model)
LayoutPtr = ctypes.POINTER(_Layout)
DecoderPtr = ctypes.POINTER(_Decoder)
DatasetPtr = ctypes.POINTER(_Dataset)
DistPtr = ctypes.POINTER(_Dist)
LogFn = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_char_p, ctypes.c_void_p)

# ---------------------------------------------------------------------- the signatures

_i32, _i64, _u32, _u64 = ctypes.c_int32, ctypes.c_int64, ctypes.c_uint32, ctypes.c_uint64
_dbl, _sz, _vp, _cp = ctypes.c_double, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_char_p
_P = ctypes.POINTER
_status = ctypes.c_int  # a C enum

# name: (restype, [argtypes])
_SIGNATURES = {
    "stx_version_number": (_i32, []),
    "stx_version_string": (_cp, []),
    "stx_build_features": (_u32, []),
    "stx_status_string": (_cp, [_status]),
    "stx_last_error": (_cp, []),
    "stx_clear_error": (None, []),
    "stx_log_set": (None, [LogFn, _vp]),
    "stx_backend_available": (_i32, [ctypes.c_int]),
    "stx_config_init_v": (_status, [_P(Config), _sz, _i32]),
    "stx_config_preset_v": (_status, [_P(Config), _sz, _i32, _cp]),
    "stx_config_validate_v": (_status, [_P(Config), _sz, _i32]),
    "stx_pattern_normalize": (_status, [_cp, _cp, _sz]),
    "stx_optim_config_init_v": (_status, [_P(OptimConfig), _sz, _i32]),
    "stx_optim_lr_at": (_dbl, [_P(OptimConfig), _i64]),
    "stx_model_create_v": (_status, [_P(Config), _sz, _i32, _P(ModelPtr)]),
    "stx_model_free": (None, [ModelPtr]),
    "stx_model_get_config_v": (_status, [ModelPtr, _P(Config), _sz, _i32]),
    "stx_model_set_training": (_status, [ModelPtr, _i32]),
    "stx_forward": (_status, [ModelPtr, _P(ctypes.c_uint8), _i32, _i32, _P(_dbl)]),
    "stx_evaluate": (_status, [ModelPtr, _P(ctypes.c_uint8), _i32, _i32, _P(_dbl)]),
    "stx_logits_read": (_status, [ModelPtr, ctypes.c_int, _vp, _sz]),
    "stx_backward": (_status, [ModelPtr]),
    "stx_zero_grad": (_status, [ModelPtr]),
    "stx_model_set_optimizer_v": (_status, [ModelPtr, _P(OptimConfig), _sz, _i32]),
    "stx_optimizer_step": (_status, [ModelPtr, _P(_dbl), _P(_dbl)]),
    "stx_model_get_dropout_counter": (_status, [ModelPtr, _P(_u64)]),
    "stx_model_set_dropout_counter": (_status, [ModelPtr, _u64]),
    "stx_model_get_step": (_status, [ModelPtr, _P(_i64)]),
    "stx_param_count": (_status, [ModelPtr, _P(_i32)]),
    "stx_param_info": (_status, [ModelPtr, _i32, _P(_cp), _P(_i32), _P(_i64)]),
    "stx_param_total": (_status, [ModelPtr, _P(_i64)]),
    "stx_param_read": (_status, [ModelPtr, _cp, ctypes.c_int, _vp, _sz]),
    "stx_param_write": (_status, [ModelPtr, _cp, ctypes.c_int, _vp, _sz]),
    "stx_grad_read": (_status, [ModelPtr, _cp, ctypes.c_int, _vp, _sz]),
    "stx_grad_write": (_status, [ModelPtr, _cp, ctypes.c_int, _vp, _sz]),
    "stx_layout_create": (_status, [_cp, _i32, _i32, _i32, _P(LayoutPtr)]),
    "stx_layout_create_from_blocks": (_status, [_i32, _i32, _i32, _P(ctypes.c_uint8),
                                                _P(LayoutPtr)]),
    "stx_layout_free": (None, [LayoutPtr]),
    "stx_layout_allows": (_i32, [LayoutPtr, _i32, _i64, _i64]),
    "stx_layout_stats": (_status, [LayoutPtr, _i32, _P(_i64), _P(_i64)]),
    "stx_attention_forward": (_status, [LayoutPtr, ctypes.c_int, _i32, _i32, _i32, _i32, _dbl,
                                        _vp, _vp, _vp, _vp, _vp]),
    "stx_attention_backward": (_status, [LayoutPtr, ctypes.c_int, _i32, _i32, _i32, _i32, _dbl,
                                         _vp, _vp, _vp, _vp, _vp, _vp, _vp, _vp, _vp]),
    "stx_model_set_layer_layout": (_status, [ModelPtr, _i32, LayoutPtr]),
    "stx_attention_benchmark": (_status, [LayoutPtr, _i32, _i32, _i32, _i32, _i32, _i32, _i32,
                                          _i32, _P(_dbl), _P(_dbl)]),
    "stx_model_get_optimizer_v": (_status, [ModelPtr, _P(OptimConfig), _sz, _i32]),
    "stx_model_set_threads": (_status, [ModelPtr, _i32]),
    "stx_model_memory": (_status, [ModelPtr, _P(_i64), _P(_i64)]),
    "stx_model_set_memory_limit": (_status, [ModelPtr, _i64]),
    "stx_model_save": (_status, [ModelPtr, _cp, _cp]),
    "stx_model_load": (_status, [_cp, _i32, _i32, _P(ModelPtr)]),
    "stx_model_app_state": (_cp, [ModelPtr]),
    "stx_dataset_open": (_status, [_cp, ctypes.c_int, _i32, _P(DatasetPtr)]),
    "stx_dataset_free": (None, [DatasetPtr]),
    "stx_dataset_info": (_status, [DatasetPtr, _P(DataInfo)]),
    "stx_dataset_split": (_status, [DatasetPtr, ctypes.c_int, _P(_i64), _P(_i64)]),
    "stx_dataset_read": (_status, [DatasetPtr, _i64, _vp, _i64]),
    "stx_dataset_sample": (_status, [DatasetPtr, _i64, _i64, _i32, _i32, _P(_u64),
                                     _P(ctypes.c_uint8)]),
    "stx_png_write": (_status, [_cp, _P(ctypes.c_uint8), _i32, _i32, _i32]),
    "stx_wav_write_mulaw": (_status, [_cp, _P(ctypes.c_uint8), _i64, _i32]),
    "stx_sample_config_init_v": (_status, [_P(SampleConfig), _sz, _i32]),
    "stx_sample_v": (_status, [ModelPtr, _P(ctypes.c_uint8), _i32, _i32, _i32, _P(SampleConfig),
                               _sz, _i32, _P(ctypes.c_uint8), _P(_i32)]),
    "stx_decoder_create": (_status, [ModelPtr, _i32, _P(DecoderPtr)]),
    "stx_decoder_free": (None, [DecoderPtr]),
    "stx_decoder_state_bytes": (_status, [ModelPtr, _i32, _P(_i64)]),
    "stx_decoder_prefill": (_status, [DecoderPtr, _P(ctypes.c_uint8), _i32]),
    "stx_decoder_step": (_status, [DecoderPtr, _P(ctypes.c_uint8)]),
    "stx_decoder_logits": (_status, [DecoderPtr, _i32, _vp, _sz]),
    "stx_decoder_position": (_status, [DecoderPtr, _P(_i32)]),
    "stx_decoder_reset": (_status, [DecoderPtr]),
    "stx_model_set_dropout_offset": (_status, [ModelPtr, _i64]),
    "stx_model_get_dropout_offset": (_status, [ModelPtr, _P(_i64)]),
    "stx_dataset_sample_offsets": (_status, [DatasetPtr, _i64, _i64, _i32, _i32, _P(_u64),
                                             _P(_i64)]),
    "stx_dataset_sample_shard": (_status, [DatasetPtr, _i64, _i64, _i32, _i32, _i32, _i32,
                                           _P(_u64), _P(ctypes.c_uint8)]),
    "stx_shard_batch": (_status, [_i32, _i32, _i32, _P(_i32), _P(_i32)]),
    "stx_dist_unique_id": (_status, [_P(DistId)]),
    "stx_dist_create": (_status, [_i32, _i32, _P(DistId), _i32, ctypes.c_double,
                                  _P(DistPtr)]),
    "stx_dist_free": (None, [DistPtr]),
    "stx_dist_info": (_status, [DistPtr, _P(_i32), _P(_i32), _P(_i32)]),
    "stx_dist_allreduce": (_status, [DistPtr, _P(ctypes.c_double), _i32, ctypes.c_int]),
    "stx_dist_options_init_v": (_status, [_P(DistOptions), _sz, _i32]),
    "stx_model_set_dist_v": (_status, [ModelPtr, DistPtr, _P(DistOptions), _sz, _i32]),
    "stx_model_set_grad_sync": (_status, [ModelPtr, _i32]),
    "stx_model_weights_checksum": (_status, [ModelPtr, _P(_u64)]),
    "stx_dist_check_weights": (_status, [DistPtr, ModelPtr, _P(_u64), _P(_i32)]),
}


class SparsetxError(Exception):
    """A failed sparsetx call: .status (negative int), .function and .message."""

    def __init__(self, status, function, message):
        self.status = status
        self.function = function
        self.message = message
        super().__init__("%s: %s (%d): %s" % (function, _STATUS_TEXT.get(status, "?"), status,
                                              message))


_STATUS_TEXT = {}


def load(path=None):
    """Load libsparsetx and declare every function of the header on it.

    path: the shared library; default: $SPARSETX_LIBRARY, then the system's search.
    Returns the ctypes.CDLL. Raises OSError when the library cannot be found and
    RuntimeError when it is not the version this binding was written for.
    """
    if path is None:
        path = os.environ.get("SPARSETX_LIBRARY") or ctypes.util.find_library("sparsetx")
    if not path:
        raise OSError("libsparsetx not found: pass its path or set SPARSETX_LIBRARY")
    if os.path.exists(path):
        path = os.path.abspath(path)  # dlopen does not look in the current directory
    lib = ctypes.CDLL(path)
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    if lib.stx_version_number() != VERSION_NUMBER:
        raise RuntimeError("libsparsetx is version %s, this binding is for %s" %
                           (lib.stx_version_string().decode(), VERSION_STRING))
    for s in STATUSES:
        _STATUS_TEXT[s] = lib.stx_status_string(s).decode()
    return lib


def check(lib, status, function="sparsetx"):
    """Raise SparsetxError for a nonzero status, with the thread's last error message."""
    if status != OK:
        raise SparsetxError(status, function, lib.stx_last_error().decode())


def config(lib, preset=None, **fields):
    """An stx_config from the defaults (or a named preset), with fields overridden.

    pattern may be a str; pos_shape a sequence (n_pos_axes is then set from its length).
    """
    cfg = Config()
    if preset is None:
        check(lib, lib.stx_config_init_v(ctypes.byref(cfg), ctypes.sizeof(cfg), ABI_VERSION),
              "stx_config_init_v")
    else:
        check(lib, lib.stx_config_preset_v(ctypes.byref(cfg), ctypes.sizeof(cfg), ABI_VERSION,
                                           preset.encode()), "stx_config_preset_v")
    for key, value in fields.items():
        if key == "pattern":
            value = value.encode() if isinstance(value, str) else value
            if len(value) >= PATTERN_MAX:
                raise ValueError("pattern longer than %d bytes" % (PATTERN_MAX - 1))
            cfg.pattern = value
        elif key == "pos_shape":
            dims = list(value)
            if len(dims) > MAX_POS_AXES:
                raise ValueError("at most %d position axes" % MAX_POS_AXES)
            cfg.n_pos_axes = len(dims)
            cfg.pos_shape[:] = dims + [0] * (MAX_POS_AXES - len(dims))
        elif hasattr(cfg, key):
            setattr(cfg, key, value)
        else:
            raise TypeError("stx_config has no field %r" % key)
    return cfg


def validate(lib, cfg):
    """Raise SparsetxError naming the first bad field of cfg."""
    check(lib, lib.stx_config_validate_v(ctypes.byref(cfg), ctypes.sizeof(cfg), ABI_VERSION),
          "stx_config_validate_v")


def optim_config(lib, **fields):
    """An stx_optim_config from the defaults with fields overridden."""
    opt = OptimConfig()
    check(lib, lib.stx_optim_config_init_v(ctypes.byref(opt), ctypes.sizeof(opt), ABI_VERSION),
          "stx_optim_config_init_v")
    for key, value in fields.items():
        if not hasattr(opt, key):
            raise TypeError("stx_optim_config has no field %r" % key)
        setattr(opt, key, value)
    return opt


def normalize_pattern(lib, pattern):
    """The canonical text of a pattern (raises SparsetxError for a malformed one)."""
    out = ctypes.create_string_buffer(4 * PATTERN_MAX)
    check(lib, lib.stx_pattern_normalize(pattern.encode(), out, len(out)), "stx_pattern_normalize")
    return out.value.decode()


def _doubles(values):
    """values as a contiguous array('d') (no copy when it already is one)."""
    if isinstance(values, array.array) and values.typecode == "d":
        return values
    return array.array("d", values)


def _ptr(arr):
    """A void* into an array.array's buffer (valid while arr lives and is not resized)."""
    return ctypes.c_void_p(arr.buffer_info()[0])


class _Owned:
    """What the handle classes share: close() frees the handle once (also through ``with`` and
    garbage collection), _call() checks a status."""

    _free = None  # the library's free function for this handle

    def close(self):
        """Free the handle (idempotent)."""
        if self._handle is not None:
            getattr(self.lib, self._free)(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _call(self, name, *args):
        check(self.lib, getattr(self.lib, name)(*args), name)


class Model(_Owned):
    """A sparsetx model (an stx_model handle) with the calls a training loop needs.

    Not thread-safe: use one Model from one thread at a time. Close it (or use ``with``)
    to free the library's memory promptly.
    """

    _free = "stx_model_free"

    def __init__(self, lib, cfg=None, **fields):
        """Create a model from cfg (an stx_config) or from the defaults plus fields."""
        self.lib = lib
        self._handle = None
        if cfg is None:
            cfg = config(lib, **fields)
        elif fields:
            raise TypeError("give either cfg or fields")
        handle = ModelPtr()
        self._call("stx_model_create_v", ctypes.byref(cfg), ctypes.sizeof(cfg), ABI_VERSION,
                   ctypes.byref(handle))
        self._handle = handle
        self._last_bt = None  # (B, T) of the last forward/evaluate, for logits()
        self._shapes = None

    @classmethod
    def load(cls, lib, path, backend=BACKEND_CPU, device=0):
        """A model from a checkpoint written by save() or sparsetx-train."""
        self = cls.__new__(cls)
        self.lib, self._handle, self._last_bt, self._shapes = lib, None, None, None
        handle = ModelPtr()
        self._call("stx_model_load", os.fsencode(path), backend, device, ctypes.byref(handle))
        self._handle = handle
        return self

    @property
    def handle(self):
        """The raw stx_model* for calls this class does not wrap."""
        if self._handle is None:
            raise ValueError("the model is closed")
        return self._handle

    # -- config and modes
    def get_config(self):
        """The model's stx_config (with the resolved backend)."""
        cfg = Config()
        self._call("stx_model_get_config_v", self.handle, ctypes.byref(cfg), ctypes.sizeof(cfg),
                   ABI_VERSION)
        return cfg

    def set_training(self, training):
        """1/True: stx_forward applies residual dropout; 0/False: it does not."""
        self._call("stx_model_set_training", self.handle, 1 if training else 0)

    # -- forward and backward
    @staticmethod
    def _tokens(tokens, B, T):
        data = bytes(tokens) if not isinstance(tokens, (bytes, bytearray)) else tokens
        if len(data) != B * T:
            raise ValueError("tokens: %d bytes, expected B*T = %d" % (len(data), B * T))
        return (ctypes.c_uint8 * len(data)).from_buffer_copy(data)

    def forward(self, tokens, B, T):
        """Forward on B sequences of T bytes (B*T bytes, row-major); returns the mean loss in
        nats per byte and keeps the activations for backward()."""
        loss = ctypes.c_double()
        self._call("stx_forward", self.handle, self._tokens(tokens, B, T), B, T,
                   ctypes.byref(loss))
        self._last_bt = (B, T)
        return loss.value

    def evaluate(self, tokens, B, T):
        """Mean loss in nats per byte without dropout and without keeping activations."""
        loss = ctypes.c_double()
        self._call("stx_evaluate", self.handle, self._tokens(tokens, B, T), B, T,
                   ctypes.byref(loss))
        self._last_bt = (B, T)
        return loss.value

    def logits(self):
        """The logits of the last forward/evaluate: array('d') of B*T*256, row-major."""
        if self._last_bt is None:
            raise ValueError("no forward or evaluate yet")
        B, T = self._last_bt
        out = array.array("d", bytes(8 * B * T * VOCAB))
        self._call("stx_logits_read", self.handle, DTYPE_F64, _ptr(out), len(out))
        return out

    def backward(self):
        """Add the gradients of the last forward's loss to the parameter gradients."""
        self._call("stx_backward", self.handle)

    def zero_grad(self):
        self._call("stx_zero_grad", self.handle)

    # -- optimizer
    def set_optimizer(self, opt=None, **fields):
        """Set the AdamW settings (an OptimConfig, or the defaults with fields overridden)."""
        if opt is None:
            opt = optim_config(self.lib, **fields)
        self._call("stx_model_set_optimizer_v", self.handle, ctypes.byref(opt),
                   ctypes.sizeof(opt), ABI_VERSION)

    def save(self, path, app_state=None):
        """Write a checkpoint (atomically: a temporary file, fsync, rename)."""
        self._call("stx_model_save", self.handle, os.fsencode(path),
                   None if app_state is None else app_state.encode())

    def decoder(self, batch=1):
        """A Decoder of `batch` sequences at position 0 (stx_decoder_create)."""
        return Decoder(self, batch)

    def decoder_state_bytes(self, batch=1):
        """Bytes of the key/value cache a decoder of `batch` sequences holds."""
        n = ctypes.c_int64()
        self._call("stx_decoder_state_bytes", self.handle, batch, ctypes.byref(n))
        return n.value

    def sample(self, prompts, n_new, batch=1, temperature=1.0, top_k=0, top_p=1.0, seed=1,
               stop_byte=-1, naive=False):
        """`batch` samples, each after its prompt (bytes of equal length, one per sample, or
        one prompt shared by all); returns a list of bytes objects (prompt included)."""
        if isinstance(prompts, (bytes, bytearray)):
            prompts = [bytes(prompts)] * batch
        n_prompt = len(prompts[0]) if prompts else 0
        sc = SampleConfig()
        self._call("stx_sample_config_init_v", ctypes.byref(sc), ctypes.sizeof(sc), ABI_VERSION)
        sc.temperature, sc.top_k, sc.top_p, sc.seed, sc.stop_byte, sc.naive = (
            temperature, top_k, top_p, seed, stop_byte, int(naive))
        flat = (ctypes.c_uint8 * max(1, batch * n_prompt)).from_buffer_copy(
            b"".join(prompts) or b"\0")
        out = (ctypes.c_uint8 * (batch * (n_prompt + n_new)))()
        lengths = (ctypes.c_int32 * batch)()
        self._call("stx_sample_v", self.handle, flat, n_prompt, n_new, batch, ctypes.byref(sc),
                   ctypes.sizeof(sc), ABI_VERSION, out, lengths)
        row = n_prompt + n_new
        return [bytes(out[b * row:b * row + lengths[b]]) for b in range(batch)]

    def step(self):
        """One optimizer step; returns (learning rate used, unclipped gradient norm). A norm
        that is not finite (NaN or Inf) means the step was skipped and nothing changed."""
        lr, norm = ctypes.c_double(), ctypes.c_double()
        status = self.lib.stx_optimizer_step(self.handle, ctypes.byref(lr), ctypes.byref(norm))
        if status not in (OK, STEP_SKIPPED):
            check(self.lib, status, "stx_optimizer_step")
        return lr.value, norm.value

    @property
    def dropout_counter(self):
        """The counter the next training forward draws its dropout masks at; assigning it
        replays the same masks."""
        n = ctypes.c_uint64()
        self._call("stx_model_get_dropout_counter", self.handle, ctypes.byref(n))
        return n.value

    @dropout_counter.setter
    def dropout_counter(self, value):
        self._call("stx_model_set_dropout_counter", self.handle, value)

    @property
    def step_count(self):
        n = ctypes.c_int64()
        self._call("stx_model_get_step", self.handle, ctypes.byref(n))
        return n.value

    # -- parameters
    def params(self):
        """{name: shape tuple} of every parameter tensor, in the library's order."""
        if self._shapes is None:
            count = ctypes.c_int32()
            self._call("stx_param_count", self.handle, ctypes.byref(count))
            shapes = {}
            for i in range(count.value):
                name, ndim = ctypes.c_char_p(), ctypes.c_int32()
                shape = (ctypes.c_int64 * MAX_DIMS)()
                self._call("stx_param_info", self.handle, i, ctypes.byref(name),
                           ctypes.byref(ndim), shape)
                shapes[name.value.decode()] = tuple(shape[:ndim.value])
            self._shapes = shapes
        return dict(self._shapes)

    def param_total(self):
        n = ctypes.c_int64()
        self._call("stx_param_total", self.handle, ctypes.byref(n))
        return n.value

    def _numel(self, name):
        shape = self.params().get(name)
        if shape is None:
            raise KeyError("no parameter named %r" % name)
        n = 1
        for s in shape:
            n *= s
        return n

    def _read(self, fn, name):
        out = array.array("d", bytes(8 * self._numel(name)))
        self._call(fn, self.handle, name.encode(), DTYPE_F64, _ptr(out), len(out))
        return out

    def _write(self, fn, name, values):
        src = _doubles(values)
        if len(src) != self._numel(name):
            raise ValueError("%s: %d values, expected %d" % (name, len(src), self._numel(name)))
        self._call(fn, self.handle, name.encode(), DTYPE_F64, _ptr(src), len(src))

    def read_param(self, name):
        """Parameter `name` as a flat row-major array('d')."""
        return self._read("stx_param_read", name)

    def write_param(self, name, values):
        """Overwrite parameter `name` from a flat sequence of floats (row-major)."""
        self._write("stx_param_write", name, values)

    def read_grad(self, name):
        """The gradient of parameter `name` as a flat row-major array('d')."""
        return self._read("stx_grad_read", name)

    def write_grad(self, name, values):
        """Overwrite the gradient of parameter `name` from a flat sequence of floats."""
        self._write("stx_grad_write", name, values)


class Decoder(_Owned):
    """An stx_decoder: generation a byte at a time with a key/value cache.

    ``logits()`` is the distribution of the next byte of each sequence (a list of `batch`
    array('d') rows of 256); ``step(bytes_)`` feeds one byte per sequence; ``prefill(prompts)``
    feeds equal-length prompts (one forward at position 0). Keep the Model open while it is used.
    """

    _free = "stx_decoder_free"

    def __init__(self, model, batch=1):
        self.model, self.lib, self.batch = model, model.lib, batch
        self._handle = None
        handle = DecoderPtr()
        self._call("stx_decoder_create", model.handle, batch, ctypes.byref(handle))
        self._handle = handle

    @property
    def position(self):
        """Bytes fed so far."""
        n = ctypes.c_int32()
        self._call("stx_decoder_position", self._handle, ctypes.byref(n))
        return n.value

    def prefill(self, prompts):
        """Feed one prompt per sequence (bytes of equal length)."""
        n = len(prompts[0])
        if any(len(p) != n for p in prompts) or len(prompts) != self.batch:
            raise ValueError("prefill: %d prompts of equal length expected" % self.batch)
        flat = (ctypes.c_uint8 * max(1, self.batch * n)).from_buffer_copy(
            b"".join(prompts) or b"\0")
        self._call("stx_decoder_prefill", self._handle, flat, n)

    def step(self, bytes_):
        """Feed one byte per sequence (a bytes object or list of ints of length batch)."""
        col = (ctypes.c_uint8 * self.batch)(*bytes(bytes_))
        self._call("stx_decoder_step", self._handle, col)

    def logits(self):
        """The next byte's logits, one array('d') of 256 per sequence."""
        out = array.array("d", bytes(8 * 256 * self.batch))
        self._call("stx_decoder_logits", self._handle, DTYPE_F64, _ptr(out), len(out))
        return [out[b * 256:(b + 1) * 256] for b in range(self.batch)]

    def reset(self):
        """Back to position 0 with the model's current weights."""
        self._call("stx_decoder_reset", self._handle)
