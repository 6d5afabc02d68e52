"""Train an embedding model contrastively (in-batch negatives) from an encoder checkpoint:

    accelerate launch training/train_embeddings.py --config embeddings_multi30k --model runs/mlm_multi30k/best

It runs `main` of hf_encoders/tasks/embeddings/train.py, as `hf-encoders train-embeddings` does.
"""

from hf_encoders.tasks.embeddings.train import main

if __name__ == "__main__":
    main()
