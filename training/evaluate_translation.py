"""BLEU/chrF of any seq2seq checkpoint on a test set:

    python training/evaluate_translation.py --model runs/translation_en_de/best --src en --tgt de

It runs `main` of hf_encoders/tasks/translation/evaluate.py, as `hf-encoders evaluate-translation` does.
"""

from hf_encoders.tasks.translation.evaluate import main

if __name__ == "__main__":
    main()
