//! What an order costs: prices come from the menu, never from the client. Pure functions.
//!
//! Delivery fee: a base of $1.99 covers the first 2 km (straight-line distance from the
//! restaurant to the delivery point); each started kilometre beyond adds $0.50; the fee never
//! exceeds $9.99. All amounts are integer cents.

/// Fee for deliveries up to [`BASE_DISTANCE_M`].
pub const BASE_FEE_CENTS: i64 = 199;
/// Distance covered by the base fee.
pub const BASE_DISTANCE_M: f64 = 2_000.0;
/// Fee per started kilometre beyond the base distance.
pub const PER_KM_CENTS: i64 = 50;
/// Highest delivery fee.
pub const MAX_FEE_CENTS: i64 = 999;

/// The delivery fee for a straight-line distance in metres.
pub fn delivery_fee_cents(distance_m: f64) -> i64 {
    let beyond = (distance_m.max(0.0) - BASE_DISTANCE_M).max(0.0);
    // The fee is capped, so bounding the kilometre count first keeps the cast exact.
    let started_km = (beyond / 1_000.0).ceil().min(1_000.0) as i64;
    (BASE_FEE_CENTS + started_km * PER_KM_CENTS).min(MAX_FEE_CENTS)
}

/// Sum of `unit_price × quantity` over the lines; `None` on overflow.
pub fn subtotal_cents(lines: &[(i64, i32)]) -> Option<i64> {
    lines.iter().try_fold(0_i64, |sum, &(unit, quantity)| {
        unit.checked_mul(i64::from(quantity))
            .and_then(|line| sum.checked_add(line))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fee_is_the_base_up_to_two_km() {
        assert_eq!(delivery_fee_cents(0.0), 199);
        assert_eq!(delivery_fee_cents(2_000.0), 199);
    }

    #[test]
    fn each_started_km_beyond_two_adds_fifty_cents() {
        assert_eq!(delivery_fee_cents(2_000.1), 249);
        assert_eq!(delivery_fee_cents(3_000.0), 249);
        assert_eq!(delivery_fee_cents(3_000.1), 299);
    }

    #[test]
    fn fee_is_capped() {
        assert_eq!(delivery_fee_cents(50_000.0), MAX_FEE_CENTS);
        assert_eq!(delivery_fee_cents(f64::MAX), MAX_FEE_CENTS);
    }

    #[test]
    fn subtotal_sums_lines_and_detects_overflow() {
        assert_eq!(subtotal_cents(&[(1_250, 2), (399, 1)]), Some(2_899));
        assert_eq!(subtotal_cents(&[]), Some(0));
        assert_eq!(subtotal_cents(&[(i64::MAX, 2)]), None);
    }
}
