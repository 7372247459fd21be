"""Many people at once: personalised and group-fair training and steering.

- `vectors`: per-person activation offsets (learned user/group embeddings, steering vectors) applied by a
  forward hook, in training batches and while decoding;
- `group_fair`: registered objectives that combine the groups' losses (average, worst group, Nash);
- `steering`: PAS activation steering toward one user, training-free;
- `conditioned`: user- or group-conditioned preference training and a new user's vector fitted from a
  few pairs with the policy frozen.
"""
