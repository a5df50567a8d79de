/**
 * Constructors for Schema classes on hot paths. effect 3.x's class constructor derives its
 * validator anew on every call when a field transforms (bytes from base64, JSON): about 0.1 ms
 * per value, paid for every message sent. `validatedMaker` makes the same checks with a
 * validator built once.
 */
import { Schema } from "effect"

/** `cls.make` for a class without a `_tag`: same checks (throws the same ParseError), validator built once. */
export const validatedMaker = <Fields extends Schema.Struct.Fields, Self>(
  cls: { readonly fields: Fields; new(props: Schema.Struct.Type<Fields>, options: true): Self }
) => {
  const validate = Schema.validateSync(Schema.Struct(cls.fields))
  return (props: Schema.Struct.Type<Fields>): Self => new cls(validate(props) as Schema.Struct.Type<Fields>, true)
}

/** `schema.make` for a struct: defaults filled in and the same checks, validator built once. */
export const structMaker = <Fields extends Schema.Struct.Fields>(schema: Schema.Struct<Fields>) => {
  const validate = Schema.validateSync(schema)
  return (props: Parameters<Schema.Struct<Fields>["make"]>[0]): Schema.Struct.Type<Fields> =>
    validate(schema.make(props, { disableValidation: true })) as Schema.Struct.Type<Fields>
}
