"""What a reader sees (notebooks 01-08 and the results folders): shared figures, the comparison of a
sweep's runs over seeds (notebook 08) and the committed ``results/`` folders with their check."""
