"""The tools: what a user does with a trained model, built on the recipe.

    evaluate.py        STS Spearman and retrieval scores (python -m minilm.tools.evaluate)
    retrieval.py       BEIR folders, nDCG@10, MRR@10, Recall@k
    mine.py            hard negatives mined with a model (python -m minilm.tools.mine)
    quantize.py        int8 / binary embeddings and the search over them
    similarity.py      similarity matrices and search (cosine, dot, euclidean, manhattan)
    truncation.py      the tokenizers library's other truncation: pairs, left truncation, overflow windows
    progress.py        the progress line of a long embedding job
    sentence_model.py  SentenceModel: the loaded model and these functions behind one object
"""
