"""BERT configuration as a frozen dataclass whose fields carry the names of HF `config.json`.

Frozen means hashable, so a Config can be a `static_argnames` value of a jitted function. Tests shrink it with
`dataclasses.replace(cfg, hidden_size=32, ...)`. Matches transformers' `BertConfig` for the fields BERT uses.
The one reader of JSON files is here too, as config.json is the first file a model folder is read for.
"""
import dataclasses
import json
import pathlib

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")  # HF ACT2FN names this encoder implements
SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
         "max_position_embeddings", "type_vocab_size")  # each must be >= 1


def read_json(path, kind: type | None = None):
    """A JSON file; a bad file (or one whose top level is not `kind`: dict or list) is a ValueError naming it (and
    the line)."""
    try:
        value = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    if kind is not None and not isinstance(value, kind):
        raise ValueError(f"{path}: expected a JSON {'object' if kind is dict else 'array'}, "
                         f"got {type(value).__name__}")
    return value


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 30522
    hidden_size: int = 384  # D
    num_hidden_layers: int = 6  # L
    num_attention_heads: int = 12  # H; head size K = D / H
    intermediate_size: int = 1536  # F
    hidden_act: str = "gelu"  # HF "gelu" is the exact erf form, not the tanh approximation
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12  # BERT's; flax/torch LayerNorm defaults (1e-6/1e-5) would be wrong
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"

    def __post_init__(self):
        for name in SIZES:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; expected one of {ACTIVATIONS}")
        if self.position_embedding_type != "absolute":
            raise ValueError(f"position_embedding_type {self.position_embedding_type!r} is not supported; "
                             "only 'absolute' (BERT's learned positions)")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "Config":
        """Take the BERT fields of an HF config dict; other keys (transformers_version, ...) are ignored."""
        model_type = d.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"{source}: model_type {model_type!r} is not supported; minilm implements BERT encoders "
                             f"(model_type 'bert': all-MiniLM-L6-v2, paraphrase-MiniLM, BERT-base and their kin); "
                             f"embed this model with sentence-transformers instead")
        architectures = d.get("architectures") or []
        if not isinstance(architectures, list) or not all(isinstance(a, str) and "Bert" in a for a in architectures):
            raise ValueError(f"{source}: architectures {architectures!r} is not supported; minilm implements BERT "
                             "(e.g. 'BertModel')")
        if "auto_map" in d:  # transformers would import modeling_*.py from the folder (trust_remote_code)
            raise ValueError(f"{source}: auto_map {d['auto_map']!r} asks for custom model code from the folder; "
                             "minilm never runs code from a model folder and implements only the standard BertModel")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in fields}
        for name, value in kwargs.items():  # JSON gives ints where floats are expected and vice versa
            want = fields[name].type
            ok = isinstance(value, str) if want is str else (
                isinstance(value, (int, float)) and not isinstance(value, bool)
                and (want is not int or float(value).is_integer()))
            if not ok:
                raise ValueError(f"{source}: field {name!r} should be {want.__name__}, got {value!r}")
            kwargs[name] = want(value)
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path) -> "Config":
        path = pathlib.Path(path)
        d = read_json(path, dict)
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict:
        # model_type and architectures make the file loadable by transformers' AutoModel / AutoConfig.
        return {"architectures": ["BertModel"], "model_type": "bert", **dataclasses.asdict(self)}

    def to_json(self, path) -> None:
        pathlib.Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


MINILM_L6_H384 = Config()  # all-MiniLM-L6-v2 / nreimers/MiniLM-L6-H384-uncased
