"""Options of train.py and distill.py beyond the recipe, in modules the scripts call, so that each script's main
line is the recipe.

    gradcache.py  train.py --mini-batch-size: the gradient of a big batch with the memory of a chunk
    adaptive.py   train.py --adaptive-layers: the loss on a random earlier layer too, and a KL toward the last
    students.py   students cut from a teacher's layers (distill.py, train.py --keep-layers) or made from scratch
    teacher.py    distill.py --teacher-cache: the teacher's embeddings computed once; the PCA for a narrower student
"""
