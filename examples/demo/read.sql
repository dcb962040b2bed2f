-- A storefront page view: a product, its stock, and its category's cheapest products. Popular
-- products are read most (an exponential spread over the catalogue).
\set pid random_exponential(1, 1000, 8)
\set cat random(1, 20)
SELECT p.name, p.price, c.name AS category FROM products p JOIN categories c ON c.id = p.category_id WHERE p.id = :pid;
SELECT stock FROM inventory WHERE product_id = :pid;
SELECT id, name, price FROM products WHERE category_id = :cat ORDER BY price LIMIT 10;
