// What the SPA does with the generated client, checked by `tsc --strict` only (never run).
// It fails to compile when the client and the API disagree at the type level: a field the
// server refuses as null typed nullable, a required field made optional, a changed enum, an
// operation or a parameter gone.
import { client } from "../generated/client.gen";
import {
  createUserApiV1UsersPost,
  listServiceTypesApiV1ReferenceServiceTypesGet,
  listUsersApiV1UsersGet,
  readOwnProfileApiV1UsersMeGet,
  updateUserApiV1UsersUserIdPut,
} from "../generated/sdk.gen";
import type {
  ErrorResponse,
  Role,
  UserCreate,
  UserResponse,
  UserUpdate,
} from "../generated/types.gen";

// Exact type equality (plain `extends` would let `string | null` pass for `string`).
type Equals<A, B> =
  (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
type Assert<T extends true> = T;

// PUT /users/{id}: a field left out is unchanged; null is refused (422), except for the
// province, where null clears it.
export type UpdateFullNameIsNeverNull = Assert<Equals<UserUpdate["full_name"], string | undefined>>;
export type UpdateRoleIsNeverNull = Assert<Equals<UserUpdate["role"], Role | undefined>>;
export type UpdateIsActiveIsNeverNull = Assert<Equals<UserUpdate["is_active"], boolean | undefined>>;
export type UpdateProvinceMayBeCleared = Assert<
  Equals<UserUpdate["responsible_province"], string | null | undefined>
>;

// POST /users: name, email and role are required; the province only for OFFICERs.
export type CreateFullNameIsRequired = Assert<Equals<UserCreate["full_name"], string>>;
export type CreateEmailIsRequired = Assert<Equals<UserCreate["email"], string>>;
export type CreateRoleIsRequired = Assert<Equals<UserCreate["role"], Role>>;
export type Roles = Assert<Equals<Role, "ADMIN" | "DISPATCHER" | "OFFICER" | "EXECUTIVE">>;

// Every error has the API's shape.
export type ErrorsCarryACode = Assert<Equals<ErrorResponse["code"], string>>;

// @ts-expect-error null is not a value of full_name: the server answers 422
export const nullName: UserUpdate = { full_name: null };
// @ts-expect-error unknown fields are refused (422)
export const unknownField: UserUpdate = { email: "new@example.gov" };

export async function signedInCalls(token: string): Promise<UserResponse | undefined> {
  client.setConfig({ baseUrl: "https://api.example.gov", auth: () => token });

  const me = await readOwnProfileApiV1UsersMeGet();
  const role: Role | undefined = me.data?.role;

  const serviceTypes = await listServiceTypesApiV1ReferenceServiceTypesGet({
    headers: { "If-None-Match": '"etag"' },
  });
  const names: string[] = (serviceTypes.data ?? []).map((item) => item.name);

  const page = await listUsersApiV1UsersGet({
    query: { role: "OFFICER", province: "Chiang Mai", page: 1, page_size: 20, sort: "full_name" },
  });
  const total: number | undefined = page.data?.total;

  const created = await createUserApiV1UsersPost({
    body: {
      full_name: "Somchai Jaidee",
      email: "somchai@example.gov",
      role: "OFFICER",
      responsible_province: "Chiang Mai",
    },
  });
  if (created.error !== undefined) {
    const code: string = created.error.code;
    throw new Error(`${code} ${String(role)} ${names.length} ${String(total)}`);
  }

  const updated = await updateUserApiV1UsersUserIdPut({
    path: { user_id: created.data.id },
    body: { role: "DISPATCHER", responsible_province: null, is_active: true },
  });
  return updated.data;
}
