/**
 * Constructors for Schema classes on hot paths. effect 3.x's class constructor derives its
 * validator anew on every call when a field transforms (bytes from base64, a bigint from a
 * string, JSON) or has a default: 0.08-0.3 ms per value here, paid for every request signed,
 * identity entry served, welcome sealed and group synced. `validatedMaker` makes the same checks
 * with a validator built once (5-20 us).
 */
import { Schema } from "effect"

/**
 * `cls.make` for a class without a `_tag`: defaults filled in and the same checks (throws the
 * same ParseError), with a validator built once.
 */
export const validatedMaker = <Fields extends Schema.Struct.Fields, Props, Self>(
  cls: { readonly fields: Fields; new(props: Props, options: true): Self }
) => {
  const validate = Schema.validateSync(Schema.Struct(cls.fields))
  return (props: Props): Self => {
    const made = new cls(props, true)
    validate(made)
    return made
  }
}

/** `schema.make` for a struct: defaults filled in and the same checks, validator built once. */
export const structMaker = <Fields extends Schema.Struct.Fields>(schema: Schema.Struct<Fields>) => {
  const validate = Schema.validateSync(schema)
  return (props: Parameters<Schema.Struct<Fields>["make"]>[0]): Schema.Struct.Type<Fields> =>
    validate(schema.make(props, { disableValidation: true })) as Schema.Struct.Type<Fields>
}
