"""The site's privacy room, each concept in its own module (as Opacus keeps its engine,
accountants and optimizer apart):

* :mod:`.budget`: whether the site may spend, what it has spent, the budget it enforces;
* :mod:`.ledger`: the durable record of every spend (journal, checksum), and :mod:`.seal` its
  signature by the site's own key;
* :mod:`.round`: one DP round, from the budget's plan to the durable ledger;
* :mod:`.dp_sgd`: the DP-SGD steps themselves (Opacus), with the public regularisers;
* :mod:`.secure_random`: noise and sampling from a source no one outside the site can replay;
* :mod:`.audit`: one line per message that left the site.
"""
