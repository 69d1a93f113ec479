//! The benchmark's schema, an order record, and random documents that satisfy it.

use serde_json::{Value, json};

use super::Rng;

/// An order record: nested objects, arrays of objects, enums, required fields, every
/// scalar type; 15 top-level properties.
pub fn order_schema() -> Value {
    let address = json!({
        "type": "object",
        "properties": {
            "street": {"type": "string", "maxLength": 60},
            "city": {"type": "string", "maxLength": 40},
            "postcode": {"type": "string", "pattern": "^[0-9]{5}$"},
            "country": {"enum": ["FR", "DE", "US", "GB", "JP"]}
        },
        "required": ["street", "city", "country"],
        "additionalProperties": false
    });
    json!({
        "type": "object",
        "properties": {
            "order_id": {"type": "integer", "minimum": 1},
            "status": {"enum": ["pending", "paid", "shipped", "delivered", "cancelled"]},
            "created_at": {"type": "string", "format": "date-time"},
            "customer": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "name": {"type": "string", "maxLength": 80},
                    "email": {"type": "string", "format": "email"},
                    "vip": {"type": "boolean"}
                },
                "required": ["id", "name", "email"],
                "additionalProperties": false
            },
            "shipping_address": address.clone(),
            "billing_address": address,
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": 20,
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                        "name": {"type": "string", "maxLength": 100},
                        "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
                        "unit_price": {"type": "number", "minimum": 0},
                        "category": {"enum": ["books", "electronics", "garden", "toys", "food"]}
                    },
                    "required": ["sku", "quantity", "unit_price"],
                    "additionalProperties": false
                }
            },
            "currency": {"enum": ["EUR", "USD", "GBP", "JPY"]},
            "subtotal": {"type": "number", "minimum": 0},
            "tax": {"type": "number", "minimum": 0},
            "total": {"type": "number", "minimum": 0},
            "paid": {"type": "boolean"},
            "coupon": {"type": ["string", "null"], "maxLength": 20},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 10},
            "notes": {"type": "string", "maxLength": 500}
        },
        "required": ["order_id", "status", "customer", "items", "currency", "total", "paid"],
        "additionalProperties": false
    })
}

/// A random order that satisfies [`order_schema`], properties in schema order (as
/// llguidance emits them), written the way models write JSON (`": "`, `", "`).
pub fn order_document(rng: &mut Rng) -> String {
    const FIRST: [&str; 8] =
        ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Ken", "Frances"];
    const LAST: [&str; 8] =
        ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Thompson", "Allen"];
    const WORDS: [&str; 12] = [
        "blue",
        "garden",
        "lamp",
        "fast",
        "delivery",
        "gift",
        "fragile",
        "handle",
        "with",
        "care",
        "please",
        "leave at the door",
    ];
    const CITIES: [&str; 5] = ["Paris", "Berlin", "Boston", "London", "Kyoto"];
    let pick = |rng: &mut Rng, xs: &[&'static str]| xs[rng.below(xs.len())];
    let price = |rng: &mut Rng| (rng.below(100_000) as f64) / 100.0;
    let address = |rng: &mut Rng| {
        let mut a = serde_json::Map::new();
        a.insert(
            "street".into(),
            json!(format!("{} {} Street", 1 + rng.below(200), pick(rng, &LAST))),
        );
        a.insert("city".into(), json!(pick(rng, &CITIES)));
        if rng.below(2) == 0 {
            a.insert("postcode".into(), json!(format!("{:05}", rng.below(100_000))));
        }
        a.insert("country".into(), json!(pick(rng, &["FR", "DE", "US", "GB", "JP"])));
        Value::Object(a)
    };
    let (first, last) = (pick(rng, &FIRST), pick(rng, &LAST));
    let mut o = serde_json::Map::new();
    o.insert("order_id".into(), json!(1 + rng.below(1_000_000)));
    o.insert(
        "status".into(),
        json!(pick(rng, &["pending", "paid", "shipped", "delivered", "cancelled"])),
    );
    o.insert(
        "created_at".into(),
        json!(format!(
            "2024-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            1 + rng.below(12),
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60)
        )),
    );
    o.insert(
        "customer".into(),
        json!({
            "id": rng.below(100_000),
            "name": format!("{first} {last}"),
            "email": format!("{}.{}@example.com", first.to_lowercase(), last.to_lowercase()),
            "vip": rng.below(4) == 0
        }),
    );
    o.insert("shipping_address".into(), address(rng));
    if rng.below(2) == 0 {
        o.insert("billing_address".into(), address(rng));
    }
    let items: Vec<Value> = (0..1 + rng.below(3))
        .map(|_| {
            let mut i = serde_json::Map::new();
            let sku: String = (0..3).map(|_| char::from(b'A' + rng.below(26) as u8)).collect();
            i.insert("sku".into(), json!(format!("{sku}-{:04}", rng.below(10_000))));
            if rng.below(2) == 0 {
                i.insert(
                    "name".into(),
                    json!(format!("{} {}", pick(rng, &WORDS), pick(rng, &WORDS))),
                );
            }
            i.insert("quantity".into(), json!(1 + rng.below(5)));
            i.insert("unit_price".into(), json!(price(rng)));
            if rng.below(2) == 0 {
                i.insert(
                    "category".into(),
                    json!(pick(rng, &["books", "electronics", "garden", "toys", "food"])),
                );
            }
            Value::Object(i)
        })
        .collect();
    o.insert("items".into(), Value::Array(items));
    o.insert("currency".into(), json!(pick(rng, &["EUR", "USD", "GBP", "JPY"])));
    o.insert("total".into(), json!(price(rng)));
    o.insert("paid".into(), json!(rng.below(2) == 0));
    if rng.below(2) == 0 {
        let tags: Vec<&str> = (0..rng.below(4)).map(|_| pick(rng, &WORDS)).collect();
        o.insert("tags".into(), json!(tags));
    }
    if rng.below(2) == 0 {
        let notes: Vec<&str> = (0..3 + rng.below(8)).map(|_| pick(rng, &WORDS)).collect();
        o.insert("notes".into(), json!(notes.join(" ")));
    }
    write_json(&Value::Object(o))
}

/// JSON with `": "` and `", "` separators, on one line.
fn write_json(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let fields: Vec<String> =
                map.iter().map(|(k, v)| format!("{}: {}", json!(k), write_json(v))).collect();
            format!("{{{}}}", fields.join(", "))
        }
        Value::Array(items) => {
            format!("[{}]", items.iter().map(write_json).collect::<Vec<_>>().join(", "))
        }
        scalar => scalar.to_string(),
    }
}
