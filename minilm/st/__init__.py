"""sentence-transformers compatibility: what a sentence-transformers folder holds beyond the recipe's encoder, mean
pooling and L2 normalisation.

    folder.py  the folder layouts of transformers (config.json, weights, tokenizer files) and sentence-transformers
               2.x-6.x, read and written, the Model that holds them, the model card, the default model
    heads.py   CLS, max and mean_sqrt_len pooling, Dense modules, prompts, Matryoshka cuts; the plain path with them
"""
