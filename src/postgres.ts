/**
 * `converge/postgres`: the delivery store on Postgres. Apart from the package root so that only
 * its users load the Postgres driver.
 */
export { type DeliveryStoreOptions, layerPg } from "./layers/PgDeliveryStore.ts"
