"""Options of train.py and distill.py beyond the recipe, in modules the scripts call, so that each script's main
line is the recipe.

    gradcache.py  train.py --mini-batch-size: the gradient of a big batch with the memory of a chunk
    adaptive.py   train.py --adaptive-layers: the loss on a random earlier layer too, and a KL toward the last
    students.py   distill.py's student: a folder, a teacher's layers kept (checkpoint.keep_layers), or from scratch
    teacher.py    distill.py --teacher-cache: the teacher's embeddings computed once; the PCA for a narrower student
"""
