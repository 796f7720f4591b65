"""A tiny random-weight Llama and a byte-level BPE tokenizer trained offline: a vLLM model without downloads.

python tests/vllm/tiny_model.py DIR   writes one to DIR (the tests, the example and the benchmark call make()).
Head size 32: vLLM's CPU attention backend takes 32, 64, 80, ... but not 16.
"""
import json
import os
import random
import sys

VOCAB = 4000
WORDS = ("the a of to and in is it that for on with as was by at be this from or an are not have but "
         "they which one you were all we her she there would their will when who him been has more if no "
         "out do so can what up said about other into than its time only could new them man some these "
         "then two first may any like now my such make over our even most me state after also made many "
         "did must before back see through way where get much go well your know should down work year "
         "because come people just say each those take day good how long very use").split()


def _corpus(n_lines=3000, seed=0):
    """Word salad with digits and JSON-ish punctuation, so the BPE learns the pieces structured output needs."""
    rng = random.Random(seed)
    for i in range(n_lines):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
        yield words.capitalize() + rng.choice([".", "?", "!", ","])
        if i % 3 == 0:
            yield json.dumps({rng.choice(WORDS): rng.randint(0, 10 ** rng.randint(1, 6)),
                              "name": rng.choice(WORDS), "ok": rng.random() < 0.5, "list": [1, 2, 3]})


def make(path, seed=0):
    """Writes config, random weights and tokenizer to `path` (made if missing); returns `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if os.path.exists(os.path.join(path, "config.json")):
        return path
    os.makedirs(path, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "</s>"]  # ids 0 and 1: bos and eos of the config below
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                         bos_token_id=0, eos_token_id=1, tie_word_embeddings=False, torch_dtype="float32")
    model = LlamaForCausalLM(config)
    # Random init gives near-uniform logits (std 0.02); a larger output layer gives peaked rows, so top-p
    # and min-p remove tokens and greedy ties are rare.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.5)
    model.save_pretrained(path)
    return path


if __name__ == "__main__":
    print(make(sys.argv[1]))
