"""Fine-tune an encoder for text or token classification, or regression:

    accelerate launch training/finetune_classification.py --config finetune_sst2 --model runs/mlm_small/best

It runs `main` of hf_encoders/tasks/classification/finetune.py, as `hf-encoders finetune` does.
"""

from hf_encoders.tasks.classification.finetune import main

if __name__ == "__main__":
    main()
