-- The demo shop: what the load generator reads and writes. Products and categories change rarely;
-- inventory changes all the time, row by row (Veneer invalidates only the rows written).
CREATE TABLE categories (
    id   int PRIMARY KEY,
    name text NOT NULL
);
CREATE TABLE products (
    id          int PRIMARY KEY,
    category_id int NOT NULL REFERENCES categories,
    name        text NOT NULL,
    price       numeric(10, 2) NOT NULL
);
CREATE INDEX products_by_category ON products (category_id, price);
CREATE TABLE inventory (
    product_id int PRIMARY KEY REFERENCES products,
    stock      int NOT NULL
);

INSERT INTO categories SELECT g, 'category ' || g FROM generate_series(1, 20) g;
INSERT INTO products
SELECT g, 1 + g % 20, 'product ' || g, round((5 + (g * 7919) % 500)::numeric + 0.99, 2)
FROM generate_series(1, 1000) g;
INSERT INTO inventory SELECT g, 100 + g % 50 FROM generate_series(1, 1000) g;
ANALYZE;
