//! `shop-latency`: a storefront's read path (a product page: the product, its stock, its category's
//! cheapest products) run against each connection string given, with the latency of each printed.
//! The code is the same for every target: point one string at PostgreSQL and one at Veneer, and only
//! the connection string changes. It reads the demo shop (`examples/demo/schema.sql`).
//!
//! ```text
//! shop-latency "host=127.0.0.1 port=5432 user=postgres dbname=shop" \
//!              "host=127.0.0.1 port=6432 user=postgres dbname=shop"
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, Statement};

/// Page views per target.
const VIEWS: usize = 2000;

/// Products the views spread over (the demo shop has 1000).
const PRODUCTS: i32 = 200;

/// What one target gave: the latency of each page view, and a digest of every answer (equal digests
/// mean equal answers; on data nothing writes meanwhile, every target must give the same).
struct Run {
    latencies: Vec<Duration>,
    answers: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let targets: Vec<String> = std::env::args().skip(1).collect();
    if targets.is_empty() {
        eprintln!("usage: shop-latency CONNECTION_STRING [CONNECTION_STRING...]");
        return ExitCode::from(2);
    }
    let mut digests = Vec::new();
    for target in &targets {
        match run(target).await {
            Ok(run) => {
                report(target, &run);
                digests.push(run.answers);
            }
            Err(e) => {
                eprintln!("{target}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if digests.windows(2).all(|w| w[0] == w[1]) {
        println!("same answers from every target");
    } else {
        // The targets run one after the other: a write in between (the demo's purchases) changes
        // the stock the later ones read.
        println!("answers differ between targets: expected if the data changed between the runs");
    }
    ExitCode::SUCCESS
}

/// The product page's statements, prepared once per connection as applications (and their pools)
/// do.
struct Statements {
    product: Statement,
    stock: Statement,
    cheapest: Statement,
}

/// Connects to `target` and views [`VIEWS`] product pages, timing each.
async fn run(target: &str) -> Result<Run, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(target, NoTls).await?;
    tokio::spawn(connection);
    let statements = Statements {
        product: client
            .prepare(
                "SELECT p.name, p.price::text, c.name FROM products p \
                 JOIN categories c ON c.id = p.category_id WHERE p.id = $1",
            )
            .await?,
        stock: client
            .prepare("SELECT stock FROM inventory WHERE product_id = $1")
            .await?,
        cheapest: client
            .prepare(
                "SELECT name, price::text FROM products p WHERE category_id = \
                 (SELECT category_id FROM products WHERE id = $1) ORDER BY price, id LIMIT 5",
            )
            .await?,
    };
    let mut run = Run {
        latencies: Vec::with_capacity(VIEWS),
        answers: 0,
    };
    for view in 0..VIEWS {
        let product = (view as i32 * 7919) % PRODUCTS + 1;
        let started = Instant::now();
        let page = product_page(&client, &statements, product).await?;
        run.latencies.push(started.elapsed());
        run.answers = run.answers.wrapping_mul(31).wrapping_add(digest(&page));
    }
    Ok(run)
}

/// The rows of one product page, as text.
async fn product_page(
    client: &Client,
    statements: &Statements,
    product: i32,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut page = Vec::new();
    let row = client.query_one(&statements.product, &[&product]).await?;
    let category: String = row.get(2);
    page.push(format!(
        "{}|{}|{category}",
        row.get::<_, String>(0),
        row.get::<_, String>(1)
    ));
    let stock = client.query_one(&statements.stock, &[&product]).await?;
    page.push(stock.get::<_, i32>(0).to_string());
    for row in client.query(&statements.cheapest, &[&product]).await? {
        page.push(format!(
            "{}|{}",
            row.get::<_, String>(0),
            row.get::<_, String>(1)
        ));
    }
    Ok(page)
}

/// A digest of a page's rows (FNV-1a).
fn digest(page: &[String]) -> u64 {
    page.iter()
        .flat_map(|line| line.bytes().chain([b'\n']))
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
}

/// Prints the latency percentiles of a target's page views.
fn report(target: &str, run: &Run) {
    let mut sorted = run.latencies.clone();
    sorted.sort_unstable();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize];
    let total: Duration = sorted.iter().sum();
    println!(
        "{target}\n  {} page views (3 queries each): p50 {:.0} µs, p99 {:.0} µs, mean {:.0} µs",
        sorted.len(),
        micros(at(0.5)),
        micros(at(0.99)),
        micros(total / sorted.len() as u32),
    );
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
