-- A purchase: one product's stock goes down (back up when it runs out).
\set pid random_exponential(1, 1000, 8)
UPDATE inventory SET stock = CASE WHEN stock > 0 THEN stock - 1 ELSE 100 END WHERE product_id = :pid;
