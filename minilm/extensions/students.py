"""distill.py's student: a folder, some of the teacher's layers kept (checkpoint.keep_layers, how
nreimers/MiniLM-L6-H384-uncased was cut from the 12-layer MiniLM), or a narrower one initialised from scratch.
tests/test_distill.py checks each kind."""
import dataclasses

import jax

from minilm.checkpoint import init_params, keep_layers
from minilm.config import Config
from minilm.st.folder import Model, load


def make_student(args, teacher: Model) -> Model:
    """distill.py's student (args: its options): from a folder (--student), from scratch (--student-hidden-size),
    or by keeping teacher layers (--student-layers, --student-num-layers)."""
    t_cfg = teacher.config
    if args.student:
        student = load(args.student)
        if student.tokenizer.vocab_size != teacher.tokenizer.vocab_size:
            raise ValueError(f"{args.student}: vocabulary of {student.tokenizer.vocab_size} tokens, the teacher's has "
                             f"{teacher.tokenizer.vocab_size}; teacher and student must tokenize alike")
        return student
    if args.student_hidden_size:
        D = args.student_hidden_size
        cfg = dataclasses.replace(t_cfg, hidden_size=D, num_attention_heads=args.student_heads or max(1, D // 64),
                                  intermediate_size=args.student_intermediate_size or 4 * D,
                                  num_hidden_layers=args.student_num_layers or t_cfg.num_hidden_layers)
        return dataclasses.replace(teacher, config=cfg, params=init_params(cfg, jax.random.key(args.seed)),
                                   activations=())  # its own width, so no Dense module: the teacher's would not fit
    layers = args.student_layers
    if not layers and args.student_num_layers:  # spread evenly: 12 -> 6 keeps 0,2,...,10; 6 -> 3 keeps 0,2,4
        L, M = t_cfg.num_hidden_layers, args.student_num_layers
        if not 1 <= M <= L:
            raise ValueError(f"--student-num-layers {M} must be in 1..{L} (the teacher's layers)")
        layers = tuple(i * L // M for i in range(M))
    if not layers:
        raise ValueError("choose a student: --student DIR, --student-layers 0,2,4, --student-num-layers N, or "
                         "--student-hidden-size D for one from scratch")
    params, cfg = keep_layers(teacher.params, t_cfg, layers)
    return dataclasses.replace(teacher, config=cfg, params=params)
