"""The encoder's part of a model folder, as transformers reads and writes it: config.json, the weights (checkpoint.py),
tokenizer.json or only vocab.txt, and the tokenizer's config files with the lengths they give. st/folder.py reads
and writes the sentence-transformers modules around it.
"""
import json
import pathlib

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from minilm.checkpoint import latest, load_params, save_params
from minilm.config import Config, read_json
from minilm.data import read_lines
from minilm.tokenizer import Tokenizer


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
