//! JSON Schema validation of a triggered event's data through the event catalog.

use criterion::{criterion_group, criterion_main, Criterion};
use dialogue::events::{EventCatalog, EventDef};
use serde_json::json;
use std::hint::black_box;

fn catalog() -> EventCatalog {
    let mut catalog = EventCatalog::default();
    // The chat message of config.yaml.
    let message = json!({
        "type": "object",
        "required": ["text", "username"],
        "properties": {
            "text": { "type": "string", "minLength": 1, "maxLength": 2000 },
            "username": { "type": "string" }
        }
    });
    catalog
        .insert(EventDef::new("message", None, Some(&message), Some(100)).expect("valid schema"));
    // A richer event: nested object, enum, array, format.
    let order = json!({
        "type": "object",
        "required": ["id", "items", "status", "contact"],
        "additionalProperties": false,
        "properties": {
            "id": { "type": "string", "pattern": "^ord-[0-9]+$" },
            "status": { "enum": ["new", "paid", "shipped"] },
            "contact": { "type": "string", "format": "email" },
            "items": {
                "type": "array", "minItems": 1, "maxItems": 50,
                "items": {
                    "type": "object", "required": ["sku", "qty"],
                    "properties": {
                        "sku": { "type": "string" },
                        "qty": { "type": "integer", "minimum": 1 }
                    }
                }
            }
        }
    });
    catalog.insert(EventDef::new("order", None, Some(&order), Some(100)).expect("valid schema"));
    catalog.insert(EventDef::untyped(
        "anything",
        dialogue::config::Durability::Stored,
    ));
    catalog
}

fn validation(c: &mut Criterion) {
    let catalog = catalog();
    let mut g = c.benchmark_group("validate");
    let message =
        json!({ "text": "hello, this is a chat message of ordinary length", "username": "alice" });
    g.bench_function("message ok", |b| {
        b.iter(|| {
            let def = catalog.get(black_box("message")).expect("declared");
            def.validate(black_box(&message)).expect("valid")
        })
    });
    let bad = json!({ "text": "", "username": 5 });
    g.bench_function("message invalid (error text)", |b| {
        b.iter(|| {
            let def = catalog.get(black_box("message")).expect("declared");
            def.validate(black_box(&bad)).expect_err("invalid")
        })
    });
    let order = json!({
        "id": "ord-1234", "status": "paid", "contact": "alice@example.com",
        "items": [{ "sku": "A-1", "qty": 2 }, { "sku": "B-7", "qty": 1 }, { "sku": "C-3", "qty": 5 }]
    });
    g.bench_function("order ok (nested, pattern, format)", |b| {
        b.iter(|| {
            let def = catalog.get(black_box("order")).expect("declared");
            def.validate(black_box(&order)).expect("valid")
        })
    });
    g.bench_function("untyped", |b| {
        b.iter(|| {
            let def = catalog.get(black_box("anything")).expect("declared");
            def.validate(black_box(&message)).expect("valid")
        })
    });
    g.finish();
}

criterion_group!(benches, validation);
criterion_main!(benches);
